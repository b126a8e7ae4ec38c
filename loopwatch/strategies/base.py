"""The base types of the strategy family: a ``Call`` and the ``Strategy`` that runs it."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

from loopwatch.targets import Target


@dataclass(frozen=True)
class Call:
    """One call of a synchronous target: the function, its arguments, who makes it.

    ``worker`` names the caller in metrics and stall reports (``""`` for none).
    """

    fn: Target
    kwargs: dict[str, Any] = field(default_factory=dict)
    worker: str = ""
    args: tuple[Any, ...] = ()


class Strategy(abc.ABC):
    """Runs calls of synchronous targets from the event loop; shared by many callers."""

    name: ClassVar[str]

    async def start(self) -> None:  # noqa: B027 - most strategies have nothing to warm up
        """Warm up (start pools) so the first call does not pay for it."""

    @abc.abstractmethod
    async def call(self, call: Call, timeout_s: float) -> Any:
        """Run ``call`` once and return its result.

        Raises TimeoutError after ``timeout_s``; on cancellation the call is abandoned
        the same way a timeout abandons it (see each strategy).
        """

    async def aclose(self, timeout_s: float) -> None:  # noqa: B027
        """Release what the strategy holds, waiting at most ``timeout_s``."""
