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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from loopwatch.threadpool import LoopState, ThreadPool, loop_state

if TYPE_CHECKING:
    # Imported on first use of an Offload: a first ``run_sync`` in a request handler
    # would pay for the strategies' import on the loop (with pydantic, when the
    # strategies carried their settings: 0.28 s, a stall of its own).
    from loopwatch.strategies.base import Strategy

P = ParamSpec("P")
T = TypeVar("T")

_threads = min(32, (os.cpu_count() or 1) + 4)  # as asyncio's default executor


def set_default_threads(max_workers: int) -> None:
    """Size the default pools of loops that have not used ``run_sync`` yet.

    The default, as for asyncio's default executor, is ``min(32, cpu_count + 4)``.
    """
    global _threads  # noqa: PLW0603 - process-wide, like asyncio's default
    if max_workers < 1:
        raise ValueError(f'"max_workers" must be >= 1: {max_workers!r}')
    _threads = max_workers


def default_pool() -> ThreadPool:
    """The running loop's default pool: at most that many of its calls run at once.

    One per loop, like asyncio's default executor's limit; the threads themselves are
    the process's (``loopwatch.threadpool.THREAD_CACHE``), shared by every loop.
    """
    return _default_pool(loop_state(asyncio.get_running_loop()))


def _default_pool(state: LoopState) -> ThreadPool:
    pool = state.default_pool
    if pool is None or pool.closed:
        pool = state.default_pool = ThreadPool(_threads, name="loopwatch-run_sync")
    return pool


async def run_sync(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn(*args, **kwargs)`` in a thread and return its result: ``asyncio.to_thread``, faster.

    Every argument goes to ``fn``. The call runs in a copy of the caller's context
    variables (an empty one when the caller has none): nothing it sets leaks into the
    next call. Exceptions come back as raised. Cancelling the caller drops the result
    (a call still queued never starts; a running one finishes in its thread). Calls
    still running when ``asyncio.run`` ends are waited for, as ``to_thread``'s are. A
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
            state = loop_state(asyncio.get_running_loop())
            pool = _default_pool(state)
            found = state.default_strategy
            if not isinstance(found, ThreadStrategy) or found.pool is not pool:
                found = state.default_strategy = ThreadStrategy(pool=pool)
            strategy = found
        result: Any = await strategy.call(Call(fn, kwargs, self._name, args), self._timeout)
        return cast("T", result)
