"""Offload strategies: how one call of a synchronous target is run from the event loop."""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, ClassVar

import structlog

from daemon import targets
from daemon.config import CooperativeExecutorConfig, ThreadExecutorConfig
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
