"""The daemon's errors; the library's (``loopwatch.errors``) are re-exported for one import."""

from __future__ import annotations

from collections.abc import Sequence

from loopwatch.errors import LoopwatchError, StrategyError, TargetError

__all__ = ["ConfigError", "EndpointError", "LoopwatchError", "StrategyError", "TargetError"]


class ConfigError(LoopwatchError):
    """A config that cannot be used; ``details`` holds one line per problem."""

    def __init__(self, message: str, details: Sequence[str] = ()) -> None:
        super().__init__(message, fix="correct the keys named, then `loopwatch check` the file")
        self.details = list(details)

    def __str__(self) -> str:
        return "\n".join([self.message, *(f"  {line}" for line in self.details)])


class EndpointError(LoopwatchError):
    """The metrics endpoint could not be served (port taken, bad certificate)."""
