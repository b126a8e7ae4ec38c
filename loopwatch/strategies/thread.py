"""The ``thread`` strategy: calls on loopwatch's thread cache, at most ``max_workers`` at once."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
from collections.abc import Collection
from typing import Any, Self

from loopwatch import resources
from loopwatch.errors import CallTimeoutError, StrategyError
from loopwatch.events import emit
from loopwatch.occupant import Occupant
from loopwatch.strategies.base import Call, PoolGauges, Strategy, override
from loopwatch.strategies.pool import Expiry
from loopwatch.threadpool import THREAD_CACHE, PoolClosedError, ThreadPool

log = logging.getLogger("loopwatch.strategies")


class ThreadStrategy(Strategy):
    """Threads of loopwatch's own pool: right for blocking I/O; CPU work still holds the GIL.

    A thread cannot be killed: on timeout the call is counted as timed out, and
    ``CallTimeoutError.still_running`` ends when it really ends, so a caller that waits
    for it (a worker slot) never piles abandoned calls up in the pool.
    """

    name = "thread"
    # Its settings: loopwatch.daemon.settings (the daemon's [executors.thread] section).
    has_settings = True

    def __init__(self, *, max_workers: int = 4, pool: ThreadPool | None = None) -> None:
        self.pool = ThreadPool(max_workers) if pool is None else pool
        self.max_workers = self.pool.max_workers
        self._expiry = Expiry()

    @override
    @classmethod
    def build(cls, settings: Any, *, occupant: Occupant, factory: str | None = None) -> Self:
        return cls(max_workers=settings.max_workers)

    @property
    def closed(self) -> bool:
        """True once ``aclose`` began: calls are refused."""
        return self.pool.closed

    @override
    async def call(self, call: Call, timeout: float) -> Any:
        try:
            job = self.pool.submit(call.fn, call.args, call.kwargs, worker=call.worker, drive=True)
        except PoolClosedError:
            raise StrategyError("thread pool is closed") from None
        future = job.future
        deadline = math.inf
        if timeout < math.inf:
            loop = future.get_loop()
            deadline = loop.time() + timeout
            # Cancelling the future at the deadline also drops a call still queued.
            self._expiry.watch(loop, deadline, timeout, future)
        try:
            result = await future
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our caller is being cancelled: not this call's fault
            if future.get_loop().time() >= deadline:
                raise CallTimeoutError(
                    f"call exceeded its timeout of {timeout} s", self.pool.ended(job)
                ) from None
            raise StrategyError("thread pool closed before the call ran") from None
        if self.queue_wait is not None:
            self.queue_wait(call.worker, self.name, max(0.0, job.started - job.submitted))
        return result

    @override
    def gauges(self) -> PoolGauges:
        return PoolGauges(self.max_workers, self.pool.active, self.pool.queued)

    @override
    async def close_clients(self, owners: Collection[str], timeout: float) -> None:
        """Each cache thread closes the clients of ``owners`` it made, a busy one after its call."""
        runs = THREAD_CACHE.in_each_thread(functools.partial(resources.close_here, owners))
        if not runs:
            return
        _, busy = await asyncio.wait(
            [asyncio.wrap_future(run) for run in runs], timeout=timeout + 1.0
        )
        if not busy:
            return
        names = {t.ident: t.name for t in threading.enumerate()}
        stuck = {i: c for i, c in list(resources.CLOSING.items()) if c[0] in owners}
        for ident, (owner, client, _) in stuck.items():
            # Its close() hangs: that thread is left to it (it holds no pool's slot).
            resources.log_stuck(owner, client, names.get(ident, str(ident)), timeout)
        if len(busy) > len(stuck):
            emit(
                log,
                logging.INFO,
                "resource_close_deferred",
                f"{len(busy) - len(stuck)} pool thread(s) busy: each closes its clients after it",
                workers=sorted(owners),
                threads=len(busy) - len(stuck),
                reason="pool threads busy with calls: each closes its clients after its call",
            )

    @override
    async def aclose(self, timeout: float) -> None:
        """Cancel queued calls; wait up to ``timeout`` for running ones (never killed)."""
        self._expiry.close()
        await self.pool.aclose(timeout)
