"""The ``process`` strategy: a ProcessPoolExecutor whose children never outlive their parent."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import select
import signal
import threading
import weakref
from collections.abc import Awaitable
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import forkserver
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from time import perf_counter
from typing import Any, Literal, Self, cast

from loopwatch import targets
from loopwatch.errors import CallTimeoutError, StrategyError
from loopwatch.events import emit
from loopwatch.occupant import Occupant, run_timed, run_untimed
from loopwatch.strategies.base import Call, override
from loopwatch.strategies.pool import PoolStrategy

StartMethod = Literal["fork", "spawn", "forkserver"]
QUIET_MODULE = "loopwatch.forkserver_quiet"


class _Recorded:
    """A multiprocessing context that remembers the processes a pool starts through it.

    A pool's children must be killed when a call is stuck in one for good, and the
    executor has no public way to list them; its ``mp_context.Process`` is the one
    public door every child passes through.
    """

    def __init__(self, context: BaseContext) -> None:
        self._context = context
        self.children: weakref.WeakSet[BaseProcess] = weakref.WeakSet()

    def Process(self, *args: Any, **kwargs: Any) -> BaseProcess:  # noqa: N802 - the context's name
        """A new child, remembered."""
        process: BaseProcess = self._context.Process(*args, **kwargs)  # type: ignore[attr-defined]
        self.children.add(process)
        return process

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


log = logging.getLogger("loopwatch.strategies")


def _init_pool_child(daemon_pid: int) -> None:
    """Initializer of every pool child: the daemon, not signals, decides when it ends."""
    # A group SIGTERM/SIGINT (Ctrl-C in a terminal, a kill of the whole cgroup) would kill
    # children mid-call; the daemon drains them and shuts them down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # But if the daemon is SIGKILLed, nothing would ever end them: children of a
    # forkserver hold both ends of their call queue, so they never see EOF. Watch the
    # daemon through a pidfd (immune to pid reuse) and leave with it.
    try:
        pidfd = os.pidfd_open(daemon_pid)
    except OSError:
        os._exit(0)
    threading.Thread(target=_exit_when_readable, args=(pidfd,), daemon=True).start()


def _exit_when_readable(fd: int) -> None:
    select.select([fd], [], [])
    os._exit(0)


def _quiet_forkserver() -> None:
    """Have the forkserver, when it starts, ignore SIGTERM (``forkserver_quiet``).

    Only if it has not started yet: one already running is someone else's. The modules
    already asked to be preloaded stay.
    """
    server = forkserver._forkserver  # the process's one forkserver: no public accessor
    if getattr(server, "_forkserver_pid", None) is not None:
        return
    modules = list(getattr(server, "_preload_modules", ["__main__"]))
    if QUIET_MODULE not in modules:
        forkserver.set_forkserver_preload([*modules, QUIET_MODULE])


class ProcessStrategy(PoolStrategy):
    """A shared ProcessPoolExecutor, replaced when a killed child breaks it.

    Children ignore SIGINT/SIGTERM; on close, children still busy after the deadline
    are terminated, so no process outlives the daemon.
    """

    name = "process"
    # Its settings: loopwatch.daemon.settings (the daemon's [executors.process] section).
    has_settings = True
    pickles = True

    def __init__(
        self,
        *,
        max_workers: int = 2,
        start_method: StartMethod = "forkserver",
        max_tasks_per_child: int | None = None,
    ) -> None:
        self.max_workers = self.capacity = max_workers
        self._start_method = start_method
        self._max_tasks_per_child = max_tasks_per_child
        self._lock = threading.Lock()
        # Pool -> the context that started its children.
        self._contexts: weakref.WeakKeyDictionary[concurrent.futures.Executor, _Recorded] = (
            weakref.WeakKeyDictionary()
        )
        super().__init__(self._new_pool())

    @override
    @classmethod
    def build(cls, settings: Any, *, occupant: Occupant, factory: str | None = None) -> Self:
        return cls(
            max_workers=settings.max_workers,
            start_method=settings.start_method,
            max_tasks_per_child=settings.max_tasks_per_child,
        )

    def children(self, pool: concurrent.futures.Executor) -> list[BaseProcess]:
        """The child processes ``pool`` started (living or not)."""
        context = self._contexts.get(pool)
        return [] if context is None else list(context.children)

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._start_method == "forkserver":
            _quiet_forkserver()
        context = _Recorded(multiprocessing.get_context(self._start_method))
        pool = concurrent.futures.ProcessPoolExecutor(
            self.max_workers,
            mp_context=cast("BaseContext", context),
            initializer=_init_pool_child,
            initargs=(os.getpid(),),
            max_tasks_per_child=self._max_tasks_per_child,
        )
        self._contexts[pool] = context
        return pool

    @override
    async def start(self) -> None:
        """Start every child now, off the loop.

        Starting a forkserver/spawn child blocks its caller ~0.15 s: done on the loop by
        the first calls, that would be the daemon's first stall.
        """
        await asyncio.to_thread(_warm_up, self.pool, self.max_workers)

    @override
    async def call(self, call: Call, timeout: float) -> Any:
        pool = self.pool
        try:
            return await super().call(call, timeout)
        except BrokenProcessPool:
            self._replace(pool)
            raise
        except CallTimeoutError as exc:
            if exc.still_running is not None:
                # A child stuck in a call would hold a pool slot for good: give the call
                # its timeout once more, then kill the pool's children and start afresh.
                exc.still_running = asyncio.ensure_future(
                    self._reap(exc.still_running, pool, timeout)
                )
            raise

    @override
    def _submit(self, call: Call) -> concurrent.futures.Future[Any]:
        pool = self.pool
        try:
            return self._send(pool, call)
        except BrokenProcessPool:
            self._replace(pool)
            if self.closed:
                raise StrategyError("process pool is closed") from None
            return self._send(self.pool, call)

    def _send(
        self, pool: concurrent.futures.Executor, call: Call
    ) -> concurrent.futures.Future[Any]:
        if self.queue_wait is None:
            # Nobody keeps the queue wait: the leaner payload (pickled for every call).
            return pool.submit(run_untimed, call.fn, call.args, call.kwargs)
        return pool.submit(run_timed, call.worker, call.fn, call.args, call.kwargs)

    async def _reap(
        self, running: Awaitable[Any], pool: concurrent.futures.Executor, grace_s: float
    ) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(running), grace_s)
        except TimeoutError:
            self._replace(pool, reason="a call ran past its timeout twice over")
            with contextlib.suppress(Exception):
                await running
        except Exception:  # the call's own error: nobody's any more
            return

    def _replace(
        self,
        broken: concurrent.futures.Executor,
        *,
        reason: str = "a child process died",
    ) -> None:
        with self._lock:
            if self.pool is not broken:
                return  # another call already replaced it
            if self.closed:
                return  # closing: a broken pool is not rebuilt (the caller's error stands)
            emit(
                log,
                logging.WARNING,
                "process_pool_replaced",
                f"the process pool was replaced: {reason}",
                reason=reason,
            )
            self.pool = self._new_pool()
            # Both off the loop: shutting a broken pool down can block for seconds
            # (seen on 3.12, waiting on its manager thread), starting children ~0.15 s.
            threading.Thread(
                target=_retire_and_warm_up,
                args=(broken, self.children(broken), self.pool, self.max_workers),
                name="loopwatch-pool-replace",
                daemon=True,
            ).start()

    @override
    async def aclose(self, timeout: float) -> None:
        """Cancel queued calls, wait for busy children up to ``timeout``, then kill them."""
        with self._lock:
            self.closed = True
        pool = self.pool
        processes = [p for p in self.children(pool) if p.is_alive()]
        pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(_join_processes, processes, timeout)


def _retire_and_warm_up(
    broken: concurrent.futures.Executor,
    children: list[BaseProcess],
    fresh: concurrent.futures.Executor,
    n: int,
) -> None:
    # Its calls have failed already (the pool breaks on the first dead child), so the
    # children left are of no use, and they ignore SIGTERM (see _init_pool_child): the
    # executor's own clean-up (3.13 terminates, then joins them) would wait for them
    # for good, and with it the interpreter's exit. Killed, they end now.
    for process in children:
        if process.is_alive():
            process.kill()
    broken.shutdown(wait=False, cancel_futures=True)
    _warm_up(fresh, n)


def _warm_up(pool: concurrent.futures.Executor, n: int) -> None:
    """Have ``pool`` start its ``n`` children; return once they ran a call, or it closed.

    Not ``concurrent.futures.wait``: a call cancelled by ``shutdown(cancel_futures=True)``
    never wakes it (only done callbacks are told), and a close during the warm-up
    would then hold this thread, and the interpreter's exit with it, for good.
    """
    ended = threading.Semaphore(0)
    try:
        futures = [pool.submit(targets.noop) for _ in range(n)]
    except RuntimeError:  # shut down before the warm-up began: nothing to start
        return
    for future in futures:
        future.add_done_callback(lambda _: ended.release())
    for _ in futures:
        ended.acquire()


def _join_processes(processes: list[BaseProcess], timeout_s: float) -> None:
    deadline = perf_counter() + timeout_s
    for process in processes:
        process.join(max(0.0, deadline - perf_counter()))
    for process in processes:
        if process.is_alive():
            emit(
                log,
                logging.WARNING,
                "process_killed",
                f"killed pool process {process.pid}: still busy at shutdown",
                pid=process.pid,
                reason="still busy at shutdown",
            )
            process.kill()
            process.join(1.0)
