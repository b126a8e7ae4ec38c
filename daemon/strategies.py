"""Offload strategies: how one call of a synchronous target is run from the event loop."""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import os
import select
import signal
import threading
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, ClassVar

import structlog

from daemon import targets
from daemon.config import CooperativeExecutorConfig, ProcessExecutorConfig, ThreadExecutorConfig
from daemon.errors import StrategyError
from daemon.watchdog import Occupant

log = structlog.get_logger("loopwatch.strategies")


@dataclass(frozen=True)
class Call:
    """One worker's target, ready to be called: the function, its kwargs, the worker's name."""

    fn: targets.Target
    kwargs: dict[str, Any] = field(default_factory=dict)
    worker: str = ""


class Strategy(abc.ABC):
    """Runs calls; shared by every worker that names it."""

    name: ClassVar[str]

    async def start(self) -> None:  # noqa: B027 - most strategies have nothing to warm up
        """Warm up (start pools) so the first call does not pay for it."""

    @abc.abstractmethod
    async def call(self, call: Call, timeout_s: float) -> Any:
        """Run ``call`` once and return its result.

        Raises TimeoutError after ``timeout_s``; on cancellation the call is abandoned
        the same way a timeout abandons it (see each strategy).
        """

    async def aclose(self, timeout_s: float) -> None:  # noqa: B027
        """Release what the strategy holds, waiting at most ``timeout_s``."""


class BlockingStrategy(Strategy):
    """Calls the target on the loop thread: the anti-pattern, kept to show and measure it.

    Nothing can interrupt the call: a timeout is only known after it returned.
    """

    name = "blocking"

    def __init__(self, occupant: Occupant) -> None:
        self._occupant = occupant

    async def call(self, call: Call, timeout_s: float) -> Any:  # noqa: D102
        self._occupant.worker = call.worker
        start = perf_counter()
        try:
            result = targets.drive(call.fn, call.kwargs)
        finally:
            self._occupant.worker = None
        if perf_counter() - start > timeout_s:
            raise TimeoutError
        return result


class CooperativeStrategy(Strategy):
    """Drives a generator on the loop, giving the loop back at safe points (its ``yield``s).

    With ``slice_s`` it yields at the first safe point after holding the loop that long,
    twice: one ``sleep(0)`` lets a timer that fell due only run after one more slice of
    ours, the second lets it run now (lag ~ slice instead of ~ 2 x slice). With
    ``yield_every`` it yields once every that many safe points: the tutorial's method.
    A timeout or cancellation closes the generator at its current safe point.
    """

    name = "cooperative"

    def __init__(self, cfg: CooperativeExecutorConfig, occupant: Occupant) -> None:
        self._slice_s = cfg.slice
        self._yield_every = cfg.yield_every
        self._occupant = occupant

    async def call(self, call: Call, timeout_s: float) -> Any:  # noqa: D102
        gen = call.fn(**call.kwargs)
        try:
            async with asyncio.timeout(timeout_s):
                if self._yield_every is not None:
                    return await self._drive_counted(gen, call.worker, self._yield_every)
                return await self._drive_sliced(gen, call.worker, self._slice_s)
        finally:
            gen.close()

    async def _drive_sliced(self, gen: Any, worker: str, slice_s: float) -> Any:
        occupant = self._occupant
        step = gen.send
        occupant.worker = worker
        deadline = perf_counter() + slice_s
        try:
            while True:
                try:
                    step(None)
                except StopIteration as stop:
                    return stop.value
                if perf_counter() >= deadline:
                    occupant.worker = None
                    await asyncio.sleep(0)
                    await asyncio.sleep(0)
                    occupant.worker = worker
                    deadline = perf_counter() + slice_s
        finally:
            occupant.worker = None

    async def _drive_counted(self, gen: Any, worker: str, every: int) -> Any:
        occupant = self._occupant
        step = gen.send
        occupant.worker = worker
        count = 0
        try:
            while True:
                try:
                    step(None)
                except StopIteration as stop:
                    return stop.value
                count += 1
                if count >= every:
                    count = 0
                    occupant.worker = None
                    await asyncio.sleep(0)
                    occupant.worker = worker
        finally:
            occupant.worker = None


class PoolStrategy(Strategy):
    """Submits calls to a ``concurrent.futures.Executor``.

    A thread (or a busy pool process) cannot be killed: on timeout the call is counted
    as timed out, but the worker's slot waits for it to really end before it starts
    another, so timeouts never pile up abandoned threads beyond ``concurrency``.
    """

    name = "executor"

    def __init__(self, executor: concurrent.futures.Executor) -> None:
        self.executor = executor

    async def call(self, call: Call, timeout_s: float) -> Any:  # noqa: D102
        future = self._submit(call)
        waiter = asyncio.wrap_future(future)
        loop = waiter.get_loop()
        # One timer handle that cancels the waiter, rather than asyncio.timeout(): this
        # is the per-call hot path, and cancelling the waiter also cancels a queued call.
        timer = loop.call_later(timeout_s, waiter.cancel)
        try:
            return await waiter
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our worker is being cancelled: not this call's fault
            if loop.time() >= timer.when():
                await self._wait_abandoned(future)
                raise TimeoutError from None
            # The executor dropped the call (a Dask scheduler lost it, a pool shut down):
            # an error of this call, not a cancellation of our worker.
            raise StrategyError(f"{self.name} executor cancelled the call") from None
        finally:
            timer.cancel()

    def _submit(self, call: Call) -> concurrent.futures.Future[Any]:
        return self.executor.submit(targets.drive, call.fn, call.kwargs)

    @staticmethod
    async def _wait_abandoned(future: concurrent.futures.Future[Any]) -> None:
        if not future.done():
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(future)

    async def aclose(self, timeout_s: float) -> None:
        """Cancel queued calls; running ones finish on their own (threads cannot be killed)."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        await _join_threads(getattr(self.executor, "_threads", ()), timeout_s)


class ThreadStrategy(PoolStrategy):
    """A shared ThreadPoolExecutor: right for blocking I/O; CPU work still holds the GIL."""

    name = "thread"

    def __init__(self, cfg: ThreadExecutorConfig) -> None:
        super().__init__(
            concurrent.futures.ThreadPoolExecutor(cfg.max_workers, thread_name_prefix="loopwatch")
        )


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


class ProcessStrategy(PoolStrategy):
    """A shared ProcessPoolExecutor, replaced when a killed child breaks it.

    Children ignore SIGINT/SIGTERM; on close, children still busy after the deadline
    are terminated, so no process outlives the daemon.
    """

    name = "process"

    def __init__(self, cfg: ProcessExecutorConfig) -> None:
        self._cfg = cfg
        self._lock = threading.Lock()
        super().__init__(self._new_pool())

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            self._cfg.max_workers,
            mp_context=multiprocessing.get_context(self._cfg.start_method),
            initializer=_init_pool_child,
            initargs=(os.getpid(),),
            max_tasks_per_child=self._cfg.max_tasks_per_child,
        )

    async def start(self) -> None:
        """Start every child now, off the loop.

        Starting a forkserver/spawn child blocks its caller ~0.15 s: done on the loop by
        the first calls, that would be the daemon's first stall.
        """
        await asyncio.to_thread(_warm_up, self.executor, self._cfg.max_workers)

    async def call(self, call: Call, timeout_s: float) -> Any:  # noqa: D102
        pool = self.executor
        try:
            return await super().call(call, timeout_s)
        except BrokenProcessPool:
            self._replace(pool)
            raise

    def _submit(self, call: Call) -> concurrent.futures.Future[Any]:
        pool = self.executor
        try:
            return pool.submit(targets.drive, call.fn, call.kwargs)
        except BrokenProcessPool:
            self._replace(pool)
            return self.executor.submit(targets.drive, call.fn, call.kwargs)

    def _replace(self, broken: concurrent.futures.Executor) -> None:
        with self._lock:
            if self.executor is not broken:
                return  # another call already replaced it
            log.warning("process_pool_replaced", reason="a child process died")
            broken.shutdown(wait=False, cancel_futures=True)
            self.executor = self._new_pool()
            threading.Thread(
                target=_warm_up, args=(self.executor, self._cfg.max_workers), daemon=True
            ).start()

    async def aclose(self, timeout_s: float) -> None:
        """Cancel queued calls, wait for busy children up to ``timeout_s``, then kill them."""
        pool = self.executor
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(_join_processes, processes, timeout_s)


def _warm_up(pool: concurrent.futures.Executor, n: int) -> None:
    futures = [pool.submit(targets.noop) for _ in range(n)]
    concurrent.futures.wait(futures)


def _join_processes(processes: list[Any], timeout_s: float) -> None:
    deadline = perf_counter() + timeout_s
    for process in processes:
        process.join(max(0.0, deadline - perf_counter()))
    for process in processes:
        if process.is_alive():
            log.warning("process_killed", pid=process.pid, reason="still busy at shutdown")
            process.kill()
            process.join(1.0)


async def _join_threads(threads: Any, timeout_s: float) -> None:
    alive = [t for t in list(threads) if t.is_alive()]
    if alive:
        await asyncio.to_thread(_join_all_threads, alive, timeout_s)


def _join_all_threads(threads: list[threading.Thread], timeout_s: float) -> None:
    deadline = perf_counter() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - perf_counter()))


class ExecutorFactoryStrategy(PoolStrategy):
    """Any ``concurrent.futures.Executor`` returned by a factory named in the config."""

    name = "executor"

    def __init__(self, factory_path: str) -> None:
        factory: Callable[[], Any] = targets.resolve(factory_path)
        try:
            executor = factory()
        except Exception as exc:
            raise StrategyError(f'executor factory "{factory_path}" failed: {exc!r}') from exc
        if not isinstance(executor, concurrent.futures.Executor):
            raise StrategyError(
                f'executor factory "{factory_path}" returned {type(executor).__name__}, '
                "not a concurrent.futures.Executor"
            )
        super().__init__(executor)
