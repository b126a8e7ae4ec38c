"""The strategies' settings: the daemon's ``[executors.<name>]`` sections, validated.

One model per strategy with settings, named in ``SETTINGS`` by the strategy's name; a
strategy reads the attributes of its model in ``build``. They live here, with the
daemon, because validation (pydantic) is the daemon's: the library imports none of it.
"""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from loopwatch.strategies import STRATEGIES, strategy_class
from loopwatch.strategies.auto import Mode
from loopwatch.strategies.process import StartMethod


class StrategySettings(BaseModel):
    """Base of each strategy's settings (the daemon's ``[executors.<name>]`` section)."""

    # No inf or nan, no unknown keys, no coercion: a settings typo is an error.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class CooperativeSettings(StrategySettings):
    """``[executors.cooperative]``: time-sliced generators on the loop."""

    slice: Annotated[float, Field(gt=0, le=86_400.0)] = 0.005
    # The tutorial's fixed count of safe points between yields; replaces ``slice``.
    yield_every: Annotated[int, Field(ge=1)] | None = None


class ThreadSettings(StrategySettings):
    """``[executors.thread]``: the shared thread pool."""

    max_workers: Annotated[int, Field(ge=1, le=4096)] = 4


class ProcessSettings(StrategySettings):
    """``[executors.process]``: the shared process pool."""

    max_workers: Annotated[int, Field(ge=1, le=256)] = 2
    start_method: StartMethod = "forkserver"
    # Replace a child after this many calls: bounds what a leaking target can hold.
    # (Not with start_method = "fork", where the standard library refuses it.)
    max_tasks_per_child: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _recycling_needs_no_fork(self) -> Self:
        if self.max_tasks_per_child is not None and self.start_method == "fork":
            raise ValueError('max_tasks_per_child needs start_method "spawn" or "forkserver"')
        return self


class AutoSettings(StrategySettings):
    """``[executors.auto]``: how ``auto`` decides."""

    # "switch" moves callers; "advise" logs the same decisions and moves nothing.
    mode: Mode = "switch"
    # Seconds of evidence per decision.
    window: Annotated[float, Field(ge=0.5, le=3600)] = 5.0
    # Decisions in a row that must agree before a caller moves.
    confirm: Annotated[int, Field(ge=1, le=100)] = 2
    # Seconds a caller stays where it moved before it may move again (doubled for a
    # caller that came back to where it was soon after it left).
    min_dwell: Annotated[float, Field(ge=0, le=86400)] = 20.0
    # Seconds between looks at the threads running calls (the GIL sampling).
    # Each sample holds the GIL ~0.3 ms (docs/auto.md): at 10 ms that is 3% of the loop,
    # at 1e-9 s the meter took the loop from 478k turns/s to 2.5k.
    sample_interval: Annotated[float, Field(ge=0.01, le=1)] = 0.05


class DaskSettings(StrategySettings):
    """``[executors.dask]``: a Dask cluster; ``address = ""`` starts an embedded one."""

    address: str = ""
    n_workers: Annotated[int, Field(ge=1, le=256)] = 2
    threads_per_worker: Annotated[int, Field(ge=1, le=256)] = 1


SETTINGS: dict[str, type[StrategySettings]] = {
    "cooperative": CooperativeSettings,
    "thread": ThreadSettings,
    "process": ProcessSettings,
    "auto": AutoSettings,
    "dask": DaskSettings,
}
assert {name for name, cls in STRATEGIES.items() if cls.has_settings} == set(SETTINGS)


def settings_of(name: str, sections: Any) -> StrategySettings | None:
    """The settings of strategy ``name`` in ``sections`` (attributes by strategy name).

    Its defaults when ``sections`` has none for it; None for a strategy without settings.
    """
    strategy_class(name)
    model = SETTINGS.get(name)
    if model is None:
        return None
    found = getattr(sections, name, None)
    return found if isinstance(found, model) else model()
