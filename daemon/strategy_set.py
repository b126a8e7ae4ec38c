"""StrategySet: the strategy instances a config needs, shared by workers, built on demand."""

from __future__ import annotations

import asyncio

import structlog

from daemon.config import ExecutorsConfig, WorkerConfig
from daemon.process_strategy import ProcessStrategy
from daemon.strategies import (
    BlockingStrategy,
    CooperativeStrategy,
    ExecutorFactoryStrategy,
    Strategy,
    ThreadStrategy,
)
from daemon.watchdog import Occupant

log = structlog.get_logger("loopwatch.strategies")

# (strategy name, executor factory path or None): one instance per key.
StrategyKey = tuple[str, str | None]


def strategy_key(worker: WorkerConfig) -> StrategyKey:
    """Which shared strategy instance a worker uses."""
    return (worker.strategy, worker.executor)


class StrategySet:
    """Builds each strategy the first time a worker needs it and closes them all at the end."""

    def __init__(self, cfg: ExecutorsConfig, occupant: Occupant) -> None:
        self.cfg = cfg
        self._occupant = occupant
        self._strategies: dict[StrategyKey, Strategy] = {}
        self._lock = asyncio.Lock()

    def _settings(self, key: StrategyKey) -> object:
        """The config a strategy was built from: equal settings -> the instance can be kept."""
        name, factory = key
        table: dict[str, object] = {
            "blocking": None,
            "thread": self.cfg.thread,
            "process": self.cfg.process,
            "cooperative": self.cfg.cooperative,
            "executor": factory,
            "dask": self.cfg.dask,
        }
        return table[name]

    def _build(self, key: StrategyKey) -> Strategy:
        name, factory = key
        if name == "blocking":
            return BlockingStrategy(self._occupant)
        if name == "thread":
            return ThreadStrategy(self.cfg.thread)
        if name == "process":
            return ProcessStrategy(self.cfg.process)
        if name == "cooperative":
            return CooperativeStrategy(self.cfg.cooperative, self._occupant)
        if name == "executor":
            assert factory is not None  # the config model guarantees it
            return ExecutorFactoryStrategy(factory)
        from daemon.dask_strategy import DaskStrategy  # noqa: PLC0415 - an optional extra

        dask: Strategy = DaskStrategy(self.cfg.dask)
        return dask

    async def get(self, worker: WorkerConfig) -> Strategy:
        """The started strategy for ``worker``; raises StrategyError when it cannot be built."""
        key = strategy_key(worker)
        async with self._lock:
            strategy = self._strategies.get(key)
            if strategy is None:
                strategy = self._build(key)
                await strategy.start()
                self._strategies[key] = strategy
            return strategy

    def peek(self, worker: WorkerConfig) -> Strategy | None:
        """The strategy ``worker`` would get, if it exists already."""
        return self._strategies.get(strategy_key(worker))

    def inherit(self, old: StrategySet) -> None:
        """Take over ``old``'s strategies whose settings did not change."""
        for key, strategy in list(old._strategies.items()):
            if old._settings(key) == self._settings(key):
                self._strategies[key] = strategy
                del old._strategies[key]

    async def aclose(self, timeout_s: float) -> None:
        """Close every strategy, each within ``timeout_s``."""
        strategies, self._strategies = list(self._strategies.values()), {}
        results = await asyncio.gather(
            *(s.aclose(timeout_s) for s in strategies), return_exceptions=True
        )
        for strategy, result in zip(strategies, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("strategy_close_failed", strategy=strategy.name, error=repr(result))
