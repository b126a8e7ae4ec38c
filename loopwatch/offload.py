"""``run_sync``, a drop-in for ``asyncio.to_thread``, and ``Offload`` for loopwatch's own options.

``run_sync(fn, *args, **kwargs)`` passes every argument to ``fn``, as ``to_thread``
does, so that none of loopwatch's options can ever collide with ``fn``'s keywords
(``requests.get(url, timeout=5)`` keeps its ``timeout``). Those options live on an
``Offload``: ``billing = Offload(timeout=30, name="billing")``, then
``await billing(fn, *args, **kwargs)``.
"""

from __future__ import annotations

import asyncio
import math
import os
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from loopwatch.threadpool import ThreadPool

if TYPE_CHECKING:
    # Imported on first use of an Offload: the strategies bring pydantic along, and a
    # first ``run_sync`` in a request handler would pay for that import on the loop
    # (~0.1 s beside two CPU hogs, a stall of its own).
    from loopwatch.strategies.base import Strategy
    from loopwatch.strategies.thread import ThreadStrategy

P = ParamSpec("P")
T = TypeVar("T")

# Threads of a loop's default pool end after this long without work.
IDLE_TIMEOUT_S = 10.0

_threads = min(32, (os.cpu_count() or 1) + 4)  # as asyncio's default executor
_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ThreadPool] = (
    weakref.WeakKeyDictionary()
)
_last: tuple[asyncio.AbstractEventLoop | None, ThreadPool | None] = (None, None)
# A default pool's strategy, for Offloads given none (its call deadlines are shared).
_strategies: weakref.WeakKeyDictionary[ThreadPool, ThreadStrategy] = weakref.WeakKeyDictionary()


def set_default_threads(max_workers: int) -> None:
    """Size the default pools of loops that have not used ``run_sync`` yet.

    The default, as for asyncio's default executor, is ``min(32, cpu_count + 4)``.
    """
    global _threads  # noqa: PLW0603 - process-wide, like asyncio's default
    if max_workers < 1:
        raise ValueError(f'"max_workers" must be >= 1: {max_workers!r}')
    _threads = max_workers


def default_pool() -> ThreadPool:
    """The running loop's default thread pool, made on first use.

    One per loop, like asyncio's default executor; its threads end after
    ``IDLE_TIMEOUT_S`` without work, so loops that come and go (a test suite) leave
    no threads behind.
    """
    global _last  # noqa: PLW0603 - a one-entry cache in front of the dict
    loop = asyncio.get_running_loop()
    last_loop, pool = _last
    if loop is last_loop and pool is not None and not pool.closed:
        return pool
    pool = _pools.get(loop)
    if pool is None or pool.closed:
        pool = _pools[loop] = ThreadPool(
            _threads, name="loopwatch-run_sync", idle_timeout=IDLE_TIMEOUT_S
        )
    _last = (loop, pool)
    return pool


async def run_sync(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn(*args, **kwargs)`` in a thread and return its result: ``asyncio.to_thread``, faster.

    Every argument goes to ``fn``. The caller's context variables are seen in the
    thread. Exceptions come back as raised. Cancelling the caller drops the result
    (a call still queued never starts; a running one finishes in its thread). A
    function that returns an awaitable is refused with TypeError rather than handed
    back unrun. For a timeout, a stall-report name or another strategy, use ``Offload``.
    """
    result: Any = await default_pool().submit(fn, args, kwargs).future
    return cast("T", result)


class Offload:
    """loopwatch's options for offloaded calls, kept apart from the function's arguments.

    ``strategy`` runs the calls (the loop's default thread pool when None); the caller
    owns it and closes it. ``timeout`` raises ``CallTimeoutError`` (a TimeoutError)
    after that many seconds; the call itself cannot be killed and ends in its own
    time. ``name`` labels the calls in stall reports, as a worker. A generator
    function is driven to completion (on ``cooperative``, yielding the loop at its
    ``yield`` statements).
    """

    __slots__ = ("_name", "_strategy", "_timeout")

    def __init__(
        self,
        strategy: Strategy | None = None,
        *,
        timeout: float | None = None,
        name: str = "",
    ) -> None:
        if timeout is not None and not (timeout > 0 and not math.isnan(timeout)):
            raise ValueError(f'"timeout" must be > 0 seconds: {timeout!r}')
        self._strategy = strategy
        self._timeout = math.inf if timeout is None else timeout
        self._name = name

    async def __call__(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` through the strategy; every argument goes to ``fn``."""
        from loopwatch.strategies.base import Call  # noqa: PLC0415 - see the imports above
        from loopwatch.strategies.thread import ThreadStrategy  # noqa: PLC0415

        strategy = self._strategy
        if strategy is None:
            pool = default_pool()
            strategy = _strategies.get(pool)
            if strategy is None:
                strategy = _strategies[pool] = ThreadStrategy(pool=pool)
        result: Any = await strategy.call(Call(fn, kwargs, self._name, args), self._timeout)
        return cast("T", result)
