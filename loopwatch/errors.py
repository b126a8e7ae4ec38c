"""Exceptions factored out to avoid import loops."""

from __future__ import annotations


class LoopwatchError(Exception):
    """Base of every error loopwatch raises on purpose."""


class TargetError(LoopwatchError):
    """An import path that does not name a usable callable; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StrategyError(LoopwatchError):
    """A strategy could not be built, lost its pool, or has been closed."""
