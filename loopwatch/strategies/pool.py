"""Strategies whose calls run in a ``concurrent.futures`` executor: executor, process, dask."""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Self

from loopwatch import targets
from loopwatch.errors import CallTimeoutError, StrategyError, TargetError
from loopwatch.occupant import Occupant, run_timed
from loopwatch.strategies.base import Call, PoolGauges, Strategy, override

FACTORY_FIX = "fix the executor factory named in the worker's `executor` key, then restart"


class PoolStrategy(Strategy):
    """Submits calls to a ``concurrent.futures.Executor``.

    A thread (or a busy pool process) cannot be killed: on timeout the call is counted
    as timed out, but the caller's slot waits for it to really end before it starts
    another, so timeouts never pile up abandoned threads beyond the callers' concurrency.
    """

    name = "executor"

    # The pool's capacity in calls at once, None when unknown (any Executor).
    capacity: int | None = None

    def __init__(self, pool: concurrent.futures.Executor) -> None:
        self.pool = pool
        self.closed = False
        # Calls submitted and not ended; written on the loop thread only.
        self.in_flight = 0
        self._expiry = Expiry()

    @override
    def gauges(self) -> PoolGauges:
        return PoolGauges(self.capacity, self.busy, self.queued)

    @property
    def busy(self) -> int:
        """Calls running in the pool (all in flight when its capacity is unknown)."""
        return self.in_flight if self.capacity is None else min(self.in_flight, self.capacity)

    @property
    def queued(self) -> int | None:
        """Calls submitted and not started; None when the capacity is unknown.

        Exact for a thread pool (an idle thread takes a call at once); for process and
        Dask pools it assumes every child is alive and takes calls in order.
        """
        return None if self.capacity is None else max(0, self.in_flight - self.capacity)

    @override
    async def call(self, call: Call, timeout: float) -> Any:
        submitted = time.time()
        future = self._submit(call)
        self.in_flight += 1
        waiter = asyncio.wrap_future(future)
        loop = waiter.get_loop()
        deadline = loop.time() + timeout
        if timeout < math.inf:
            # Cancelling the waiter at the deadline also cancels a call still queued.
            self._expiry.watch(loop, deadline, timeout, waiter)
        ended = True
        try:
            started, result = await waiter
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our caller is being cancelled: not this call's fault
            if loop.time() >= deadline:
                error = self._timed_out(future, timeout)
                ended = error.still_running is None
                raise error from None
            # The pool dropped the call (a Dask scheduler lost it, a pool shut down):
            # an error of this call, not a cancellation of our caller.
            raise StrategyError(f"{self.name} pool cancelled the call") from None
        finally:
            if ended:
                self.in_flight -= 1
        if self.queue_wait is not None and started:
            self.queue_wait(call.worker, self.name, max(0.0, started - submitted))
        return result

    def _submit(self, call: Call) -> concurrent.futures.Future[Any]:
        return self.pool.submit(run_timed, call.worker, call.fn, call.args, call.kwargs)

    def _timed_out(
        self, future: concurrent.futures.Future[Any], timeout_s: float
    ) -> CallTimeoutError:
        """The error of a call past ``timeout_s``, with what still runs of it."""
        running = None
        if not future.done():
            running = asyncio.wrap_future(future)
            # Its result or error is nobody's any more: retrieved here, never logged.
            running.add_done_callback(_consume)
            running.add_done_callback(self._ended)
        return CallTimeoutError(f"call exceeded its timeout of {timeout_s} s", running)

    def _ended(self, _: object) -> None:
        self.in_flight -= 1  # an abandoned call really ended (on the loop thread)

    @override
    async def aclose(self, timeout: float) -> None:
        """Cancel queued calls; wait up to ``timeout`` for running ones (never killed)."""
        self.closed = True
        self._expiry.close()
        pool = self.pool
        # shutdown(wait=True) in a daemon thread of its own: a pool thread stuck in a
        # target for good must neither block the loop nor the interpreter's exit.
        closer = threading.Thread(
            target=pool.shutdown,
            kwargs={"wait": True, "cancel_futures": True},
            name="loopwatch-pool-close",
            daemon=True,
        )
        closer.start()
        await asyncio.to_thread(closer.join, timeout)


class Expiry:
    """Call deadlines without a timer per call: the per-call path is the hot path.

    Calls of one timeout expire in the order they started, so a FIFO per timeout value
    holds their deadlines, and one timer per FIFO fires at its head. Calls that end in
    time (nearly all) are dropped from the head as new ones come: a deque append and a
    pop, where a timer handle per call costs a heap push, a cancel and a heap cleanup.
    Loop thread only.
    """

    def __init__(self) -> None:
        self._queues: dict[float, deque[tuple[float, asyncio.Future[Any]]]] = {}
        self._timers: dict[float, asyncio.TimerHandle] = {}

    def watch(
        self,
        loop: asyncio.AbstractEventLoop,
        deadline: float,
        timeout_s: float,
        waiter: asyncio.Future[Any],
    ) -> None:
        """Cancel ``waiter`` at ``deadline`` (``loop.time()``) unless it is done by then."""
        queue = self._queues.get(timeout_s)
        if queue is None:
            queue = self._queues[timeout_s] = deque()
        while queue and queue[0][1].done():
            queue.popleft()
        queue.append((deadline, waiter))
        if timeout_s not in self._timers:
            self._timers[timeout_s] = loop.call_at(deadline, self._fire, loop, timeout_s)

    def _fire(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        queue = self._queues[timeout_s]
        now = loop.time()
        while queue and (queue[0][1].done() or queue[0][0] <= now):
            _, waiter = queue.popleft()
            if not waiter.done():
                waiter.cancel()
        if queue:
            self._timers[timeout_s] = loop.call_at(queue[0][0], self._fire, loop, timeout_s)
        else:
            del self._timers[timeout_s]

    def close(self) -> None:
        """Stop the timers (the waiters are the callers' to end)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._queues.clear()


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned call's outcome so that asyncio does not log it."""
    if not future.cancelled():
        future.exception()


class ExecutorStrategy(PoolStrategy):
    """Any ``concurrent.futures.Executor`` you give it; ``aclose`` shuts it down."""

    name = "executor"
    needs_factory = True

    @override
    @classmethod
    def build(cls, settings: Any, *, occupant: Occupant, factory: str | None = None) -> Self:
        if factory is None:
            raise StrategyError('strategy "executor" needs a factory path', fix=FACTORY_FIX)
        return cls.from_factory(factory)

    @classmethod
    def from_factory(cls, factory_path: str) -> Self:
        """Call the ``"module:factory"`` named and wrap the executor it returns.

        Raises StrategyError when the factory fails or returns something else.
        """
        try:
            factory: Callable[[], Any] = targets.resolve(factory_path)
        except TargetError as exc:
            raise StrategyError(exc.message, fix=FACTORY_FIX) from exc
        try:
            pool = factory()
        except Exception as exc:
            raise StrategyError(
                f'executor factory "{factory_path}" failed: {exc!r}', fix=FACTORY_FIX
            ) from exc
        if not isinstance(pool, concurrent.futures.Executor):
            raise StrategyError(
                f'executor factory "{factory_path}" returned {type(pool).__name__}, '
                "not a concurrent.futures.Executor",
                fix=FACTORY_FIX,
            )
        return cls(pool)
