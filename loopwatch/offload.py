"""``run_sync``: one call of a synchronous function off the event loop, through a strategy."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any, TypeVar, TypeVarTuple, cast

from loopwatch.strategies.base import Call, Strategy
from loopwatch.strategies.pool import ThreadStrategy

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_default: ThreadStrategy | None = None
_default_lock = threading.Lock()


def default_strategy() -> ThreadStrategy:
    """The process-wide thread pool ``run_sync`` uses when given no strategy.

    Sized like asyncio's default executor; its threads end with the interpreter.
    """
    global _default  # noqa: PLW0603 - one pool per process, made on first use
    with _default_lock:
        if _default is None or _default.closed:
            _default = ThreadStrategy(max_workers=32)
        return _default


async def run_sync(
    fn: Callable[[*Ts], T],
    *args: *Ts,
    strategy: Strategy | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - per call, like asyncio.wait_for
    name: str = "",
) -> T:
    """Run ``fn(*args)`` through ``strategy`` (a shared thread pool when None).

    Pass keyword arguments with ``functools.partial``. ``name`` labels the call in
    stall reports (as a worker). A generator function is driven to completion; on
    ``cooperative`` it yields the loop at its ``yield`` statements.

    Raises TimeoutError after ``timeout`` seconds. A thread cannot be killed: on
    timeout or cancellation the call is abandoned, but it keeps its pool slot until it
    ends (see each strategy).
    """
    timeout_s = math.inf if timeout is None else timeout
    if not timeout_s > 0:
        raise ValueError(f'"timeout" must be > 0 seconds: {timeout!r}')
    chosen = default_strategy() if strategy is None else strategy
    result: Any = await chosen.call(Call(fn, {}, name, args), timeout_s)
    return cast("T", result)
