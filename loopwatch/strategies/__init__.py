"""The strategy family: how one call of a synchronous target is run from the event loop.

Chosen by name, like uvicorn's loops and protocols: ``STRATEGY_NAMES`` lists them and
``build_strategy`` is the one table that maps a name to its class. Modules group the
strategies by where a call runs: ``inline`` (on the loop: blocking, cooperative),
``pool`` (a concurrent.futures pool: thread, executor), ``process``, ``dask``.
"""

from __future__ import annotations

from typing import Literal, Protocol, assert_never, get_args

from loopwatch.errors import StrategyError
from loopwatch.occupant import Occupant
from loopwatch.strategies.base import Call, Strategy
from loopwatch.strategies.dask import DaskStrategy
from loopwatch.strategies.inline import BlockingStrategy, CooperativeStrategy
from loopwatch.strategies.pool import ExecutorStrategy, PoolStrategy, ThreadStrategy
from loopwatch.strategies.process import ProcessStrategy, StartMethod

__all__ = [
    "ON_LOOP",
    "STRATEGY_NAMES",
    "BlockingStrategy",
    "Call",
    "CooperativeStrategy",
    "DaskStrategy",
    "ExecutorStrategy",
    "PoolSettings",
    "PoolStrategy",
    "ProcessStrategy",
    "Strategy",
    "StrategyName",
    "ThreadStrategy",
    "build_strategy",
]

StrategyName = Literal["blocking", "thread", "process", "cooperative", "executor", "dask"]
STRATEGY_NAMES: tuple[StrategyName, ...] = get_args(StrategyName)
# Strategies whose target runs on the loop thread: the watchdog's occupant names them.
ON_LOOP: frozenset[StrategyName] = frozenset({"blocking", "cooperative"})


class ThreadSettings(Protocol):
    """What ``thread`` is built from."""

    @property
    def max_workers(self) -> int: ...


class ProcessSettings(Protocol):
    """What ``process`` is built from."""

    @property
    def max_workers(self) -> int: ...
    @property
    def start_method(self) -> StartMethod: ...
    @property
    def max_tasks_per_child(self) -> int | None: ...


class CooperativeSettings(Protocol):
    """What ``cooperative`` is built from."""

    @property
    def slice(self) -> float: ...
    @property
    def yield_every(self) -> int | None: ...


class DaskSettings(Protocol):
    """What ``dask`` is built from."""

    @property
    def address(self) -> str: ...
    @property
    def n_workers(self) -> int: ...
    @property
    def threads_per_worker(self) -> int: ...


class PoolSettings(Protocol):
    """The settings of every strategy (the daemon's ``[executors]`` section fits it)."""

    @property
    def thread(self) -> ThreadSettings:
        """Settings of ``thread``."""
        ...

    @property
    def process(self) -> ProcessSettings:
        """Settings of ``process``."""
        ...

    @property
    def cooperative(self) -> CooperativeSettings:
        """Settings of ``cooperative``."""
        ...

    @property
    def dask(self) -> DaskSettings:
        """Settings of ``dask``."""
        ...


def build_strategy(
    name: StrategyName, settings: PoolSettings, occupant: Occupant, factory: str | None = None
) -> Strategy:
    """A new, not yet started strategy called ``name``; ``factory`` is for ``executor``.

    Raises StrategyError when it cannot be built (a factory that fails).
    """
    match name:
        case "blocking":
            return BlockingStrategy(occupant)
        case "thread":
            return ThreadStrategy(max_workers=settings.thread.max_workers)
        case "process":
            cfg = settings.process
            return ProcessStrategy(
                max_workers=cfg.max_workers,
                start_method=cfg.start_method,
                max_tasks_per_child=cfg.max_tasks_per_child,
            )
        case "cooperative":
            coop = settings.cooperative
            return CooperativeStrategy(
                slice_s=coop.slice, yield_every=coop.yield_every, occupant=occupant
            )
        case "executor":
            if factory is None:
                raise StrategyError('strategy "executor" needs a factory path')
            return ExecutorStrategy.from_factory(factory)
        case "dask":
            dask = settings.dask
            return DaskStrategy(
                address=dask.address,
                n_workers=dask.n_workers,
                threads_per_worker=dask.threads_per_worker,
            )
        case _:
            assert_never(name)
