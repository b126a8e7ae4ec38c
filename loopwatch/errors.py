"""loopwatch's errors: each one a type to catch, with fields, never a message to parse."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any


class LoopwatchError(Exception):
    """Base of every error loopwatch raises on purpose.

    ``message`` says what is wrong, naming the value; ``fix``, when known, what to do.
    """

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


class TargetError(LoopwatchError):
    """An import path that does not name a usable callable; the message says why."""


class StrategyError(LoopwatchError):
    """A strategy could not be built, lost its pool, or has been closed."""


class MissingExtraError(StrategyError):
    """A strategy needs an optional dependency that is not installed."""

    def __init__(self, strategy: str, module: str, extra: str) -> None:
        super().__init__(
            f'strategy "{strategy}" needs {module}: pip install "loopwatch[{extra}]"',
            fix=f'pip install "loopwatch[{extra}]"',
        )
        self.strategy = strategy
        self.module = module
        self.extra = extra


class SchedulerUnavailableError(StrategyError):
    """A remote scheduler (Dask's) could not be reached."""


class CallTimeoutError(LoopwatchError, TimeoutError):
    """A call passed its timeout; ``still_running`` ends when the call really ends.

    A thread cannot be killed: a caller that must not start another call while this one
    runs (a worker slot) awaits ``still_running``; None when nothing is left running.
    It is a TimeoutError, so code that catches asyncio's timeouts catches it too.
    """

    def __init__(self, message: str, still_running: Awaitable[Any] | None = None) -> None:
        super().__init__(message)
        self.still_running = still_running
