"""The base types of the strategy family: a ``Call`` and the ``Strategy`` that runs it.

What a strategy *is* lives on its class, once: its name, its settings model, where a
call runs, what it can call, what it needs installed. The family's table (``STRATEGIES``
in ``loopwatch.strategies``) maps names to classes, and everything else (config
validation, the daemon's checks and metrics) reads these facts from there.
"""

from __future__ import annotations

import abc
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar

from loopwatch.occupant import Occupant
from loopwatch.targets import Target

if sys.version_info >= (3, 12):
    from typing import override as override  # noqa: PLC0414 - re-exported
else:  # typing_extensions would be a dependency for a decorator that only marks
    _F = TypeVar("_F", bound=Callable[..., Any])

    def override(method: _F) -> _F:
        """``typing.override`` (3.12): for type checkers only."""
        return method


# Called with (worker, strategy, seconds) for every call that started in a pool: the
# time from submit to start, measured where the call starts.
QueueWait = Callable[[str, str, float], None]


@dataclass(frozen=True)
class Call:
    """One call of a synchronous target: the function, its arguments, who makes it.

    ``worker`` names the caller in metrics and stall reports (``""`` for none).
    """

    fn: Target
    kwargs: dict[str, Any] = field(default_factory=dict)
    worker: str = ""
    args: tuple[Any, ...] = ()


class PoolGauges(NamedTuple):
    """A pool's saturation: capacity (None when unknown), calls running, calls queued."""

    capacity: int | None
    busy: int
    queued: int | None


class Strategy(abc.ABC):
    """Runs calls of synchronous targets from the event loop; shared by many callers."""

    name: ClassVar[str]
    # It has a settings section (the daemon's ``[executors.<name>]``, whose models are
    # the daemon's: the library imports no validation library).
    has_settings: ClassVar[bool] = False
    # The target runs on the loop thread (the watchdog's occupant names the worker).
    on_loop: ClassVar[bool] = False
    # The target and its arguments are pickled to another process.
    pickles: ClassVar[bool] = False
    # What it calls: plain functions, or generator functions driven step by step.
    calls: ClassVar[Literal["function", "generator"]] = "function"
    # It is built from an executor factory's import path.
    needs_factory: ClassVar[bool] = False
    # (module, extra): an optional dependency it needs, and the extra that installs it.
    requires: ClassVar[tuple[str, str] | None] = None
    # Strategies it runs its calls through (by name), shared with other callers: whoever
    # builds it builds those first and hands them over with ``bind``.
    delegates: ClassVar[tuple[str, ...]] = ()

    # Set by whoever records metrics; strategies that pool calls report queue waits to it.
    queue_wait: QueueWait | None = None

    @classmethod
    @abc.abstractmethod
    def build(cls, settings: Any, *, occupant: Occupant, factory: str | None = None) -> Strategy:
        """A new, not yet started instance from its settings (or factory path).

        Raises StrategyError when it cannot be built.
        """

    def bind(self, strategies: Mapping[str, Strategy]) -> None:  # noqa: B027 - most have none
        """Hand over the started strategies named in ``delegates``."""

    def runs_as(self, caller: str) -> str:  # noqa: ARG002 - one strategy runs every caller
        """The name of the strategy that runs ``caller``'s next call (for metrics labels)."""
        return self.name

    async def start(self) -> None:  # noqa: B027 - most strategies have nothing to warm up
        """Warm up (start pools) so the first call does not pay for it."""

    @abc.abstractmethod
    async def call(self, call: Call, timeout: float) -> Any:  # noqa: ASYNC109 - per call
        """Run ``call`` once and return its result.

        Raises CallTimeoutError after ``timeout`` seconds; on cancellation the call is
        abandoned the same way a timeout abandons it (see each strategy).
        """

    def decisions(self) -> list[dict[str, Any]]:
        """What a strategy that chooses for each caller chose, and why (none here)."""
        return []

    def gauges(self) -> PoolGauges | None:
        """The pool's saturation, None for strategies that run no pool."""
        return None

    def yields(self) -> Mapping[str, int]:
        """Times the strategy gave the loop back during each worker's calls."""
        return {}

    async def close_clients(self, owners: Collection[str], timeout: float) -> None:  # noqa: ASYNC109, B027
        """Close the per-thread clients of ``owners`` (see ``loopwatch.resources``).

        Each client is closed by the thread that made it, within ``timeout`` seconds;
        a strategy whose threads close theirs when they end has nothing to do here.
        """

    async def aclose(self, timeout: float) -> None:  # noqa: ASYNC109, B027
        """Release what the strategy holds, waiting at most ``timeout`` seconds."""
