"""ThreadPool: worker threads that hand results straight to asyncio futures, in batches.

``loop.run_in_executor`` and ``asyncio.to_thread`` pay, per call, for a
``concurrent.futures.Future`` (a condition variable, its state copied onto an asyncio
future by a callback) and for one self-pipe write per result. Here a call is an
asyncio future and a plain job object: a thread takes the job from a ``SimpleQueue``,
runs it, and puts it on its loop's inbox; only the thread that finds the inbox empty
wakes the loop, and the loop then settles every job finished since (one wake-up per
batch). Threads start on demand up to ``max_workers`` and, when ``idle_timeout`` is
set, end after that long without work.

Thread contract: ``submit``, the drains and every counter are the loop's (each loop
submitting to the pool has an inbox of its own); worker threads touch only the job
they hold, the inbox's deque and its ``wake_pending`` flag. The flag is cleared by
the loop *before* it empties the deque, and set by a thread *after* it appended, so no
finished job is ever left without a wake-up on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import queue
import threading
import weakref
from collections import deque
from collections.abc import Callable, Collection
from time import perf_counter
from types import GeneratorType
from typing import Any

from loopwatch.occupant import POOL_CALLS

_ids = itertools.count(1)
# Thread ident -> name of every pool thread running a call now (each writes its own).
RUNNING: dict[int, str] = {}


class Job:
    """One call: what to run, where its outcome goes, and what the thread measured."""

    __slots__ = (
        "args",
        "context",
        "drained",
        "drive",
        "ended",
        "fn",
        "future",
        "inbox",
        "kwargs",
        "ok",
        "result",
        "started",
        "submitted",
        "worker",
    )

    def __init__(  # noqa: PLR0917 - built once per call: positional is the cheap way
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        future: asyncio.Future[Any],
        inbox: _Inbox,
        context: contextvars.Context | None,
        worker: str,
        drive: bool,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.future = future
        self.inbox = inbox
        self.context = context
        self.worker = worker
        self.drive = drive
        self.submitted = perf_counter()
        self.started = 0.0
        self.ok = False
        self.result: Any = None
        self.drained = False
        self.ended: asyncio.Future[None] | None = None


class _Inbox:
    """Finished jobs of one loop, settled on that loop in batches."""

    __slots__ = ("done", "loop", "pool", "wake_pending")

    def __init__(self, pool: ThreadPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.done: deque[Job] = deque()
        self.wake_pending = False

    def post(self, job: Job) -> None:
        """From a worker thread: the job is finished (or skipped)."""
        self.done.append(job)
        if not self.wake_pending:
            self.wake_pending = True
            try:
                self.loop.call_soon_threadsafe(self.drain)
            except RuntimeError:  # the loop is closed: nobody waits for these any more
                self.pool.lost(len(self.done))
                self.done.clear()

    def drain(self) -> None:
        """On the loop: settle every finished job."""
        self.wake_pending = False
        done = self.done
        pool = self.pool
        while done:
            job = done.popleft()
            pool.in_flight -= 1
            job.drained = True
            future = job.future
            if not future.done():
                if job.ok:
                    future.set_result(job.result)
                else:
                    _set_exception(future, job.result)
            if job.ended is not None:
                job.ended.set_result(None)
            job.result = None  # the caller has it: do not keep it alive here


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    try:
        future.set_exception(exc)
    except TypeError:  # asyncio refuses StopIteration: the caller still learns of it
        error = RuntimeError(f"the call raised {type(exc).__name__}")
        error.__cause__ = exc
        future.set_exception(error)


class ThreadPool:
    """Up to ``max_workers`` threads running calls for any number of event loops.

    ``submit`` (on a loop's thread) returns a ``Job`` whose ``future`` the caller
    awaits. Cancelling that future drops the result; a call not started yet is then
    never started, one running finishes in its thread.
    """

    def __init__(
        self,
        max_workers: int,
        *,
        name: str = "loopwatch",
        idle_timeout: float | None = None,
    ) -> None:
        if max_workers < 1:
            raise ValueError(f'"max_workers" must be >= 1: {max_workers!r}')
        self.max_workers = max_workers
        self.name = name
        self._idle_timeout = idle_timeout
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = (
            weakref.WeakKeyDictionary()
        )
        self._last: tuple[asyncio.AbstractEventLoop | None, _Inbox | None] = (None, None)
        self.closed = False
        # Submitted and not yet settled on their loop: written by the loops' threads
        # only, exact as long as no two loops submit at once from different threads.
        self.in_flight = 0
        # Jobs whose loop closed before they were settled (written under the lock).
        self._lost = 0

    @property
    def threads(self) -> int:
        """Threads alive now."""
        return len(self._threads)

    @property
    def pending(self) -> int:
        """Calls submitted and not yet settled: queued, running, or on their way back."""
        return self.in_flight - self._lost

    def lost(self, count: int) -> None:
        """From a worker thread: ``count`` jobs will never be settled (their loop closed)."""
        with self._lock:
            self._lost += count

    def submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        worker: str = "",
        drive: bool = False,
        copy_context: bool = True,
    ) -> Job:
        """Queue ``fn(*args, **kwargs)`` for a thread; from a running loop's thread.

        ``drive`` runs a returned generator to completion (its return value is the
        result). ``copy_context`` runs the call in a copy of the caller's context
        variables (skipped, for free, when there are none). ``worker`` names the call
        in stall reports. Raises RuntimeError once the pool is closed.
        """
        if self.closed:
            raise RuntimeError(f"thread pool {self.name!r} is closed")
        loop = asyncio.get_running_loop()
        last_loop, inbox = self._last
        if loop is not last_loop or inbox is None:
            inbox = self._inbox(loop)
        context = None
        if copy_context:
            context = contextvars.copy_context()
            if not len(context):
                context = None
        job = Job(fn, args, kwargs, loop.create_future(), inbox, context, worker, drive)
        self._jobs.put(job)
        self.in_flight += 1
        threads = len(self._threads)
        if threads < self.max_workers and self.in_flight - self._lost > threads:
            self._spawn()
        return job

    def _inbox(self, loop: asyncio.AbstractEventLoop) -> _Inbox:
        inbox = self._inboxes.get(loop)
        if inbox is None:
            inbox = self._inboxes[loop] = _Inbox(self, loop)
        self._last = (loop, inbox)
        return inbox

    def _spawn(self) -> None:
        with self._lock:
            if len(self._threads) >= self.max_workers:
                return
            thread = threading.Thread(
                target=self._work, name=f"{self.name}-{next(_ids)}", daemon=True
            )
            self._threads.add(thread)
        thread.start()

    def ended(self, job: Job) -> asyncio.Future[None] | None:
        """A future settled when ``job`` has really ended in its thread; None if it has."""
        if job.drained:
            return None
        if job.ended is None:
            job.ended = job.future.get_loop().create_future()
        return job.ended

    def _work(self) -> None:
        me = threading.current_thread()
        ident = threading.get_ident()
        get = self._jobs.get
        timeout = self._idle_timeout
        calls = POOL_CALLS
        while True:
            try:
                job = get(timeout=timeout)
            except queue.Empty:
                # Idle: leave, unless a job came meanwhile.
                with self._lock:
                    if not self._jobs.empty():
                        continue
                    self._threads.discard(me)
                # A job put between that look and our leaving was counted against us by
                # submit, which then started no thread for it: start one for it now.
                if not self._jobs.empty() and not self.closed:
                    self._spawn()
                return
            if job is None:  # closing
                with self._lock:
                    self._threads.discard(me)
                return
            if not job.future.cancelled():
                job.started = perf_counter()
                calls[ident] = (job.worker, job.fn)
                RUNNING[ident] = me.name
                _run(job)
                del RUNNING[ident]
            job.inbox.post(job)
            del job  # no finished call is kept alive by an idle thread
            if me not in self._threads:
                return  # forgotten while it hung: a replacement has its place

    def forget(self, ident: int) -> str | None:
        """Give up on thread ``ident`` (stuck in a call for good): it no longer counts.

        A new thread may start in its place; the forgotten one ends if its call ever
        returns. Returns its name, None if it is not one of this pool's threads.
        """
        with self._lock:
            for thread in self._threads:
                if thread.ident == ident:
                    self._threads.discard(thread)
                    return thread.name
        return None

    def thread_idents(self) -> set[int]:
        """The idents of the threads alive now."""
        return {t.ident for t in list(self._threads) if t.ident is not None}

    def in_each_thread(self, fn: Callable[[], object], timeout: float) -> list[asyncio.Future[Any]]:
        """Run ``fn`` once in each thread alive now; from a loop's thread.

        A barrier keeps each run on a thread of its own. A thread busy for longer than
        ``timeout`` runs it once its call ends. Returns the runs' futures.
        """
        count = len(self._threads)
        if count == 0:
            return []
        barrier = threading.Barrier(count)

        def once() -> None:
            with contextlib.suppress(threading.BrokenBarrierError):  # one was busy: go on
                barrier.wait(timeout)
            fn()

        return [self.submit(once, (), {}, copy_context=False).future for _ in range(count)]

    async def aclose(self, timeout: float) -> None:  # noqa: ASYNC109 - a deadline for the threads
        """Cancel queued calls; wait up to ``timeout`` for running ones, then return.

        Threads end as soon as their call does; one still busy after ``timeout`` (a
        call that never returns) is a daemon thread and never holds the interpreter.
        """
        self.closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.future.cancel()
                job.inbox.post(job)
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._jobs.put(None)
        await asyncio.to_thread(_join_all, threads, timeout)


def _run(job: Job) -> None:
    """Run the job's call in this thread, keeping its outcome on the job."""
    try:
        if job.context is None:
            result = job.fn(*job.args, **job.kwargs)
        else:
            result = job.context.run(job.fn, *job.args, **job.kwargs)
        if type(result) is GeneratorType and job.drive:
            result = _exhaust(result)
        elif hasattr(type(result), "__await__"):
            _refuse_awaitable(job.fn, result)
        job.result = result
        job.ok = True
    except BaseException as exc:
        job.result = exc


def _exhaust(gen: GeneratorType[Any, Any, Any]) -> Any:
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def _refuse_awaitable(fn: Callable[..., Any], result: Any) -> None:
    # asyncio.to_thread would hand back a coroutine object that never runs.
    close = getattr(result, "close", None)
    if close is not None:
        close()
    raise TypeError(f"{fn!r} returned an awaitable; run_sync runs synchronous functions")


def _join_all(threads: Collection[threading.Thread], timeout: float) -> None:
    deadline = perf_counter() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - perf_counter()))
