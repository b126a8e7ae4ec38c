"""Offload threads: one process-wide cache, pools that limit it, results handed back in batches.

The threads are the process's, not a loop's (trio's ``_thread_cache`` model): an idle
thread waits on a lock of its own for its next call, the most recently idle is reused
first, and one left idle for ``THREAD_CACHE.idle_timeout`` seconds ends. A
``ThreadPool`` owns no thread: it is a limit on how many of the cache's threads run
its calls at once, with a queue for the rest; a thread that ends a pool's call takes
that pool's next queued call itself, with no round trip through the loop.

``loop.run_in_executor`` and ``asyncio.to_thread`` pay, per call, for a
``concurrent.futures.Future`` (a condition variable, its state copied onto an asyncio
future by a callback) and for one self-pipe write per result. Here a call is an
asyncio future and a plain job object: the thread that ran it appends it to its loop's
inbox, only the thread that finds the inbox empty wakes the loop, and the loop then
settles every job finished since (one wake-up per batch).

What outlives what: a loop's state (its inbox, its default pool, the count of its calls
in flight) is kept by the loop, weakly, and refers to the loop only through the jobs in
flight, so a loop that is gone leaves nothing behind. A job drops its callable, its
arguments and its context in the thread as soon as the call returns, and its result
once the loop has it. ``asyncio.run`` waits for the calls still running when it ends,
as it waits for ``to_thread``'s, through an async generator the loop closes at its end
(``shutdown_asyncgens``), for at most ``SHUTDOWN_TIMEOUT`` seconds.

Thread contract: ``submit``, ``drain`` and a loop state's counters are that loop's;
worker threads touch the job they hold, the inbox's deque and its ``wake_pending`` flag
(cleared by the loop *before* it empties the deque, set by a thread *after* it
appended, so no finished job is ever left without a wake-up on its way). A pool's
slots and queue are under its lock: loops on several threads may share a pool.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import os
import sys
import threading
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future as ThreadFuture
from time import perf_counter
from types import GeneratorType
from typing import Any

from loopwatch.occupant import POOL_CALLS, code_of

log = logging.getLogger("loopwatch")

# Seconds ``asyncio.run`` waits at its end for calls still running, as 3.12+ bounds
# ``shutdown_default_executor`` (3.11 waits for ever); then it logs them and goes.
# How long a closing pool waits for threads whose calls ended to free their slots.
SLOT_FREED_S = 0.05
SHUTDOWN_TIMEOUT = 300.0
# Seconds an idle cache thread waits for a call before it ends (trio's figure).
IDLE_TIMEOUT = 10.0

_ids = itertools.count(1)
# Thread ident -> (name, job) of every cache thread running a call now (each writes its
# own): what the daemon names at exit, a closing pool and the loop's end wait for.
RUNNING: dict[int, tuple[str, Job]] = {}


class PoolClosedError(RuntimeError):
    """The pool was closed: it takes no more calls."""


class Job:
    """One call: what to run, where its outcome goes, and what the thread measured."""

    __slots__ = (
        "abandoned",
        "args",
        "context",
        "drained",
        "drive",
        "ended",
        "fn",
        "future",
        "kwargs",
        "ok",
        "pool",
        "result",
        "started",
        "state",
        "submitted",
        "worker",
    )

    def __init__(  # noqa: PLR0917 - built once per call: positional is the cheap way
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        future: asyncio.Future[Any],
        state: LoopState,
        pool: ThreadPool,
        worker: str,
        drive: bool,
    ) -> None:
        self.fn: Callable[..., Any] | None = fn
        self.args: tuple[Any, ...] | None = args
        self.kwargs: dict[str, Any] | None = kwargs
        self.context: contextvars.Context | None = contextvars.copy_context()
        # Dropped once the loop settled the job (``drained``): the thread that posted
        # it may hold the job a moment longer, but must not hold the outcome.
        self.future: asyncio.Future[Any] = future
        self.state = state
        self.pool = pool
        self.worker = worker
        self.drive = drive
        self.submitted = perf_counter()
        self.started = 0.0
        self.ok = False
        self.result: Any = None
        self.drained = False
        # Its pool gave up waiting for it (closed past its timeout): the loop's end
        # does not wait for it either.
        self.abandoned = False
        self.ended: asyncio.Future[None] | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop of the caller, for a job not yet settled."""
        return self.future.get_loop()

    def drop_call(self) -> None:
        """Let go of what the call was made of: it ran, or it never will."""
        self.fn = self.args = self.kwargs = self.context = None


class LoopState:
    """What one loop keeps of its offloaded calls; the loop keeps it, weakly.

    Refers to its loop only through the jobs in flight (each job's future), so that a
    loop no longer used is collected, and this with it.
    """

    __slots__ = (
        "__weakref__",
        "default_pool",
        "default_strategy",
        "done",
        "exit_waiter",
        "in_flight",
        "loop_ref",
        "waiter",
        "wake_pending",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop_ref = weakref.ref(loop)
        self.done: deque[Job] = deque()
        self.wake_pending = False
        # Submitted on this loop and not yet settled on it (loop thread only).
        self.in_flight = 0
        self.default_pool: ThreadPool | None = None
        self.default_strategy: object | None = None  # Offload's, for calls given none
        self.exit_waiter: asyncio.Future[None] | None = None
        self.waiter: AsyncGenerator[None, None] | None = None

    def post(self, job: Job) -> None:
        """From a worker thread: the job is finished (or skipped)."""
        loop = job.loop()
        self.done.append(job)
        if not self.wake_pending:
            self.wake_pending = True
            try:
                loop.call_soon_threadsafe(self.drain)
            except RuntimeError:
                pass  # closed: below
            else:
                return
        elif not loop.is_closed():
            return
        # The loop is closed: nobody will settle these. Drop them, results and all.
        self.done.clear()

    def drain(self) -> None:
        """On the loop: settle every finished job."""
        self.wake_pending = False
        done = self.done
        while done:
            job = done.popleft()
            job.drained = True
            if not job.abandoned:
                self.in_flight -= 1
            future = job.future
            if not future.done():
                if job.ok:
                    future.set_result(job.result)
                else:
                    _set_exception(future, job.result)
            if job.ended is not None and not job.ended.done():
                job.ended.set_result(None)
            job.result = None
            job.future = None  # type: ignore[assignment]  # see Job
        waiter = self.exit_waiter
        if waiter is not None and self.in_flight <= 0 and not waiter.done():
            waiter.set_result(None)

    async def wait_for_calls(self, timeout: float) -> None:  # noqa: ASYNC109 - a bound, not a deadline
        """Wait until every call of this loop has ended, for at most ``timeout`` seconds."""
        if self.in_flight <= 0:
            return
        self.exit_waiter = asyncio.get_running_loop().create_future()
        _, pending = await asyncio.wait([self.exit_waiter], timeout=timeout)
        if pending:
            calls = THREAD_CACHE.running(self)
            log.warning(
                "%d offloaded call(s) still running after %g s at the end of the event loop, "
                "left running: %s",
                len(calls),
                timeout,
                ", ".join(calls) or "unknown",
                extra={"calls": calls, "timeout": timeout},
            )


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    try:
        future.set_exception(exc)
    except TypeError:  # asyncio refuses StopIteration: the caller still learns of it
        error = RuntimeError(f"the call raised {type(exc).__name__}")
        error.__cause__ = exc
        future.set_exception(error)


_states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopState] = (
    weakref.WeakKeyDictionary()
)
# The last loop asked for and its state: most processes run one loop at a time.
_last: tuple[weakref.ref[asyncio.AbstractEventLoop], LoopState] | None = None


def loop_state(loop: asyncio.AbstractEventLoop) -> LoopState:
    """The state of ``loop`` (a running loop, on its thread), made on first use."""
    global _last  # noqa: PLW0603 - a one-entry cache in front of the dict
    last = _last
    if last is not None and last[0]() is loop:
        return last[1]
    state = _states.get(loop)
    if state is None:
        state = _states[loop] = LoopState(loop)
        _wait_at_the_end(loop, state)
    _last = (state.loop_ref, state)
    return state


async def _wait_for_calls_at_exit(state: LoopState) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        # Closed by the loop's ``shutdown_asyncgens`` (``asyncio.run`` ending), or
        # collected with a loop that is gone, when nothing can be in flight.
        loop = state.loop_ref()
        if loop is not None and asyncio._get_running_loop() is loop:
            await state.wait_for_calls(SHUTDOWN_TIMEOUT)


def _wait_at_the_end(loop: asyncio.AbstractEventLoop, state: LoopState) -> None:
    """Have the loop's ``shutdown_asyncgens`` wait for the calls still running.

    The loop learns of an async generator at its first iteration, through the hook it
    set for its thread; asyncio's and uvloop's ``shutdown_asyncgens`` close every one it
    learnt of. The generator gets no finalizer: the loop's would hold the loop.
    """
    hooks = sys.get_asyncgen_hooks()
    if getattr(hooks.firstiter, "__self__", None) is not loop:
        return  # a loop that does not track async generators: nothing would close it
    if getattr(loop, "_asyncgens_shutdown_called", False):
        return  # shutting down already: too late to be waited for
    waiter = _wait_for_calls_at_exit(state)
    sys.set_asyncgen_hooks(firstiter=hooks.firstiter, finalizer=None)
    try:
        waiter.asend(None).send(None)
    except StopIteration:
        state.waiter = waiter
    finally:
        sys.set_asyncgen_hooks(*hooks)


class _Worker:
    """One cache thread: the call handed to it, and chores to run between calls."""

    __slots__ = ("chores", "job", "thread", "wake")

    def __init__(self, job: Job | None) -> None:
        self.job = job
        self.wake = threading.Lock()
        self.wake.acquire()
        self.chores: deque[tuple[Callable[[], object], ThreadFuture[None]]] = deque()
        self.thread: threading.Thread | None = None


class ThreadCache:
    """The process's offload threads: started on demand, reused, ended when idle."""

    def __init__(self) -> None:
        self.idle_timeout = IDLE_TIMEOUT
        self._reset()

    def _reset(self) -> None:
        # Idle workers, most recently idle last: ``popitem`` and ``del`` are atomic, so
        # handing a call to a worker and a worker's retiring need no lock.
        self._idle: dict[_Worker, None] = {}
        self._workers: set[_Worker] = set()
        self._lock = threading.Lock()

    @property
    def threads(self) -> int:
        """Cache threads alive now, idle or busy."""
        return len(self._workers)

    def start(self, job: Job) -> None:
        """Run ``job`` on an idle thread, or a new one. Raises RuntimeError if none starts."""
        try:
            worker, _ = self._idle.popitem()
        except KeyError:
            self._spawn(job)
        else:
            worker.job = job
            worker.wake.release()

    def _spawn(self, job: Job) -> None:
        worker = _Worker(job)
        worker.thread = threading.Thread(
            target=self._work, args=(worker,), name=f"loopwatch-{next(_ids)}", daemon=True
        )
        with self._lock:
            self._workers.add(worker)
        try:
            worker.thread.start()
        except BaseException:
            # "can't start new thread" (memory, ulimit -u): nothing is counted for it.
            with self._lock:
                self._workers.discard(worker)
            raise

    def _work(self, worker: _Worker) -> None:
        ident = threading.get_ident()
        name = threading.current_thread().name
        job, worker.job = worker.job, None
        try:
            while True:
                while job is not None:
                    job = _run_one(job, ident, name)
                self._do_chores(worker)
                if not self._wait(worker):
                    return
                job, worker.job = worker.job, None
        finally:
            with self._lock:
                self._workers.discard(worker)
            self._do_chores(worker)
            _close_clients_here()

    def _wait(self, worker: _Worker) -> bool:
        """Wait idle for the next call; False when it is time to end."""
        idle = self._idle
        while True:
            idle[worker] = None
            if worker.chores:  # one came as it went idle: it may have found it busy
                try:
                    del idle[worker]
                except KeyError:
                    pass  # a call is on its way: the chores run after it
                else:
                    self._do_chores(worker)
                    continue
            if worker.wake.acquire(timeout=self.idle_timeout):
                return True
            try:
                del idle[worker]
            except KeyError:  # taken just now: its call is on its way
                worker.wake.acquire()
                return True
            return False

    @staticmethod
    def _do_chores(worker: _Worker) -> None:
        while worker.chores:
            chore, done = worker.chores.popleft()
            try:
                chore()
            except BaseException as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)

    def in_each_thread(self, chore: Callable[[], object]) -> list[ThreadFuture[None]]:
        """Run ``chore`` once in each cache thread alive now; a future per thread.

        An idle thread runs it at once, a busy one after its call.
        """
        futures = []
        with self._lock:
            workers = list(self._workers)
            for worker in workers:
                done: ThreadFuture[None] = ThreadFuture()
                worker.chores.append((chore, done))
                futures.append(done)
        for worker in workers:
            try:
                del self._idle[worker]
            except KeyError:
                continue  # busy, or being handed a call: it looks at its chores after
            worker.wake.release()
        return futures

    @staticmethod
    def running(state: LoopState) -> list[str]:
        """``function (thread)`` of each call of ``state``'s loop running now."""
        found = []
        for ident, (thread, job) in list(RUNNING.items()):
            if job.state is state:
                entry = POOL_CALLS.get(ident)
                code = entry[1] if entry is not None else None
                found.append(f"{code.co_qualname if code is not None else 'a call'} ({thread})")
        return found


THREAD_CACHE = ThreadCache()


def _run_one(job: Job, ident: int, name: str) -> Job | None:
    """Run ``job`` here (unless it was cancelled while queued); return its pool's next job."""
    if not job.future.cancelled():
        job.started = perf_counter()
        POOL_CALLS[ident] = (job.worker, code_of(job.fn))  # type: ignore[arg-type]
        RUNNING[ident] = (name, job)
        _run(job)
        del RUNNING[ident]
    job.drop_call()
    job.state.post(job)
    return job.pool.next_job()


def _run(job: Job) -> None:
    """Run the job's call in this thread, in its own context, keeping its outcome on the job."""
    try:
        result = job.context.run(job.fn, *job.args, **job.kwargs)  # type: ignore[union-attr,misc,arg-type]
        if type(result) is GeneratorType and job.drive:
            result = _exhaust(result)
        elif hasattr(type(result), "__await__"):
            _refuse_awaitable(job.fn, result)
        job.result = result
        job.ok = True
    except BaseException as exc:
        # This frame holds the job: keep it out of the traceback, or the exception
        # would keep the job (and its future and loop) alive through a cycle.
        exc.__traceback__ = exc.__traceback__.tb_next if exc.__traceback__ else None
        job.result = exc
        del exc


def _exhaust(gen: GeneratorType[Any, Any, Any]) -> Any:
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def _refuse_awaitable(fn: Callable[..., Any] | None, result: Any) -> None:
    # asyncio.to_thread would hand back a coroutine object that never runs.
    close = getattr(result, "close", None)
    if close is not None:
        close()
    raise TypeError(f"{fn!r} returned an awaitable; run_sync runs synchronous functions")


def _close_clients_here() -> None:
    """Close the per-thread clients this ending thread made, in this thread."""
    resources = sys.modules.get("loopwatch.resources")
    if resources is not None:  # never imported: no client was ever made
        resources.close_here()


_pools: weakref.WeakSet[ThreadPool] = weakref.WeakSet()


class ThreadPool:
    """At most ``max_workers`` of the cache's threads running this pool's calls at once.

    ``submit`` (on a loop's thread) returns a ``Job`` whose ``future`` the caller
    awaits. Cancelling that future drops the result; a call not started yet is then
    never started, one running finishes in its thread. Any number of loops may share
    a pool.
    """

    def __init__(self, max_workers: int, *, name: str = "loopwatch") -> None:
        if max_workers < 1:
            raise ValueError(f'"max_workers" must be >= 1: {max_workers!r}')
        self.max_workers = max_workers
        self.name = name
        self.closed = False
        self._reset()
        _pools.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Job] = deque()
        self.active = 0  # calls handed to a thread and not yet ended there

    @property
    def pending(self) -> int:
        """Calls submitted and not yet ended: running or queued."""
        return self.active + len(self._queue)

    @property
    def queued(self) -> int:
        """Calls waiting for a slot."""
        return len(self._queue)

    def submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        worker: str = "",
        drive: bool = False,
    ) -> Job:
        """Queue ``fn(*args, **kwargs)`` for a thread; from a running loop's thread.

        The call runs in a copy of the caller's context variables. ``drive`` runs a
        returned generator to completion (its return value is the result). ``worker``
        names the call in stall reports. Raises PoolClosedError once the pool is
        closed, and RuntimeError when no thread could be started for it (the call is
        then not made, now or later).
        """
        loop = asyncio.get_running_loop()
        state = loop_state(loop)
        job = Job(fn, args, kwargs, loop.create_future(), state, self, worker, drive)
        with self._lock:
            if self.closed:
                raise PoolClosedError(f"thread pool {self.name!r} is closed")
            start = self.active < self.max_workers
            if start:
                self.active += 1
            else:
                self._queue.append(job)
        if start:
            try:
                THREAD_CACHE.start(job)
            except BaseException:
                self._start_failed()
                raise
        state.in_flight += 1
        return job

    def next_job(self) -> Job | None:
        """From a thread that ended a call of this pool: the next queued call, for it to run."""
        with self._lock:
            if self._queue:
                return self._queue.popleft()  # the slot passes on
            self.active -= 1
            return None

    def _start_failed(self) -> None:
        """A slot's thread did not start: free the slot, and hand it to a queued call."""
        with self._lock:
            self.active -= 1
            if not self._queue or self.active >= self.max_workers:
                return
            job = self._queue.popleft()
            self.active += 1
        try:
            THREAD_CACHE.start(job)
        except RuntimeError as exc:
            job.result = exc
            job.state.post(job)  # its caller learns of it; the call is never made
            self._start_failed()

    def ended(self, job: Job) -> asyncio.Future[None] | None:
        """A future settled when ``job`` has really ended in its thread; None if it has."""
        if job.drained:
            return None
        if job.ended is None:
            job.ended = job.loop().create_future()
        return job.ended

    async def aclose(self, timeout: float) -> None:  # noqa: ASYNC109 - a deadline for the calls
        """Cancel queued calls; wait up to ``timeout`` for running ones, then return.

        A call still running after ``timeout`` (one that never returns) is left to its
        thread, and the loop's end no longer waits for it.
        """
        with self._lock:
            self.closed = True
            queued = list(self._queue)
            self._queue.clear()
        for job in queued:
            job.future.cancel()
            job.drop_call()
            job.state.post(job)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.active and loop.time() < deadline:
            ends = [self.ended(job) for job in self._running(loop)]
            ended = [f for f in ends if f is not None and not f.done()]
            if not ended:
                await self._slots_freed(deadline)
                break
            await asyncio.wait(ended, timeout=deadline - loop.time())
        for job in self._running(loop):
            if not job.abandoned:
                job.abandoned = True
                job.state.in_flight -= 1

    async def _slots_freed(self, deadline: float) -> None:
        """Let the threads whose calls this loop saw end free their slots (microseconds).

        A thread posts its call's outcome, then frees its slot: a slot still taken
        after ``SLOT_FREED_S`` is another loop's call.
        """
        loop = asyncio.get_running_loop()
        until = min(deadline, loop.time() + SLOT_FREED_S)
        while self.active and loop.time() < until:  # noqa: ASYNC110 - freed off the loop
            await asyncio.sleep(0.001)  # a wait in the selector: the GIL goes to them

    def _running(self, loop: asyncio.AbstractEventLoop) -> list[Job]:
        """The calls of ``loop`` running on this pool now, not yet settled."""
        return [
            job
            for _, job in list(RUNNING.values())
            # No future: settled meanwhile by its loop (another loop's, on its own thread).
            if job.pool is self and (future := job.future) is not None and future.get_loop() is loop
        ]


def _after_fork_in_child() -> None:
    """Only the forking thread lives on in a child: forget every other thread and call."""
    global _last, _states  # noqa: PLW0603 - a child starts afresh
    THREAD_CACHE._reset()
    for pool in list(_pools):
        pool._reset()
    _states = weakref.WeakKeyDictionary()
    _last = None
    RUNNING.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
