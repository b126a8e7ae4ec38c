"""Exceptions factored out to avoid import loops."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any


class LoopwatchError(Exception):
    """Base of every error loopwatch raises on purpose."""


class TargetError(LoopwatchError):
    """An import path that does not name a usable callable; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StrategyError(LoopwatchError):
    """A strategy could not be built, lost its pool, or has been closed."""


class CallTimeoutError(TimeoutError):
    """A call passed its timeout; ``still_running`` ends when the call really ends.

    A thread cannot be killed: a caller that must not start another call while this one
    runs (a worker slot) awaits ``still_running``; None when nothing is left running.
    """

    def __init__(self, message: str, still_running: Awaitable[Any] | None = None) -> None:
        super().__init__(message)
        self.still_running = still_running
