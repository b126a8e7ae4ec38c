"""The strategy family: how one call of a synchronous target is run from the event loop.

Chosen by name, like uvicorn's loops and protocols: ``STRATEGIES`` is the one table that
maps a name to its class, and each class carries the facts about itself (its settings
model, whether it runs on the loop, whether it pickles, what it calls, what it needs
installed). Adding a strategy is a module of its own and a line in the table. Modules
group the strategies by where a call runs: ``inline`` (on the loop: blocking,
cooperative), ``thread`` (loopwatch's own thread pool), ``pool`` (any
concurrent.futures executor), ``process``, ``dask``; ``auto`` runs each caller's calls
through ``thread`` or ``process``, as measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loopwatch.errors import StrategyError
from loopwatch.occupant import Occupant
from loopwatch.strategies.auto import AutoStrategy
from loopwatch.strategies.base import Call, PoolGauges, Strategy
from loopwatch.strategies.dask import DaskStrategy
from loopwatch.strategies.inline import BlockingStrategy, CooperativeStrategy
from loopwatch.strategies.pool import ExecutorStrategy, PoolStrategy
from loopwatch.strategies.process import ProcessStrategy, StartMethod
from loopwatch.strategies.thread import ThreadStrategy

__all__ = [
    "STRATEGIES",
    "STRATEGY_NAMES",
    "AutoStrategy",
    "BlockingStrategy",
    "Call",
    "CooperativeStrategy",
    "DaskStrategy",
    "ExecutorStrategy",
    "PoolGauges",
    "PoolStrategy",
    "ProcessStrategy",
    "StartMethod",
    "Strategy",
    "ThreadStrategy",
    "build_strategy",
    "strategy_class",
]

# Name -> class: everything else about a strategy is read from its class.
STRATEGIES: Mapping[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        BlockingStrategy,
        ThreadStrategy,
        ProcessStrategy,
        CooperativeStrategy,
        ExecutorStrategy,
        DaskStrategy,
        AutoStrategy,
    )
}
STRATEGY_NAMES: tuple[str, ...] = tuple(STRATEGIES)


def strategy_class(name: str) -> type[Strategy]:
    """The class called ``name``; StrategyError naming the known ones otherwise."""
    cls = STRATEGIES.get(name)
    if cls is None:
        known = ", ".join(f"'{n}'" for n in STRATEGY_NAMES[:-1]) + f" or '{STRATEGY_NAMES[-1]}'"
        raise StrategyError(f"Input should be {known}")
    return cls


def build_strategy(
    name: str, settings: Any = None, occupant: Occupant | None = None, factory: str | None = None
) -> Strategy:
    """A new, not yet started strategy called ``name``; ``factory`` is for ``executor``.

    ``settings`` is its settings section, validated (``loopwatch.daemon.settings``),
    None for a strategy that has none. Raises StrategyError when it cannot be built (a
    factory that fails).
    """
    cls = strategy_class(name)
    return cls.build(
        settings, occupant=Occupant() if occupant is None else occupant, factory=factory
    )
