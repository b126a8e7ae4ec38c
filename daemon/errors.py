"""Exceptions factored out to avoid import loops."""

from __future__ import annotations

from collections.abc import Sequence


class LoopwatchError(Exception):
    """Base of every error loopwatch raises on purpose."""


class ConfigError(LoopwatchError):
    """A config that cannot be used; ``details`` holds one line per problem."""

    def __init__(self, message: str, details: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)

    def __str__(self) -> str:
        return "\n".join([self.message, *(f"  {line}" for line in self.details)])


class StrategyError(LoopwatchError):
    """A strategy could not be built or has been closed."""


class EndpointError(LoopwatchError):
    """The metrics endpoint could not be served (port taken, bad certificate)."""
