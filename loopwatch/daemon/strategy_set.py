"""StrategySet: the strategy instances a set of callers needs, shared, built on demand."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from loopwatch.daemon.settings import settings_of
from loopwatch.occupant import Occupant
from loopwatch.strategies import Strategy, build_strategy, strategy_class

log = structlog.get_logger("loopwatch.strategies")

# (strategy name, executor factory path or None): one instance per key.
StrategyKey = tuple[str, str | None]


class StrategySet:
    """Builds each strategy the first time a caller needs it and closes them all at the end.

    ``settings`` holds each strategy's settings as an attribute of its name (the daemon's
    ``[executors]`` section); None gives every strategy its defaults.
    """

    def __init__(
        self,
        settings: Any,
        occupant: Occupant,
        on_build: Callable[[StrategyKey, Strategy], None] | None = None,
    ) -> None:
        self.settings = settings
        self._occupant = occupant
        self._on_build = on_build
        self._strategies: dict[StrategyKey, Strategy] = {}
        self._lock = asyncio.Lock()

    def _settings_of(self, key: StrategyKey) -> object:
        """What a strategy was built from: equal settings -> the instance can be kept.

        A strategy that delegates was built from its delegates' settings too.
        """
        name, factory = key
        delegates = tuple(self._settings_of((d, None)) for d in strategy_class(name).delegates)
        return (settings_of(name, self.settings), factory, delegates)

    def closure(self, keys: set[StrategyKey]) -> set[StrategyKey]:
        """``keys`` and the keys of the strategies they delegate to."""
        found = set(keys)
        for name, _ in keys:
            found |= self.closure({(d, None) for d in strategy_class(name).delegates})
        return found

    async def get(self, key: StrategyKey) -> Strategy:
        """The started strategy for ``key``; raises StrategyError when it cannot be built."""
        async with self._lock:
            return await self._get(key)

    async def _get(self, key: StrategyKey) -> Strategy:
        strategy = self._strategies.get(key)
        if strategy is not None:
            return strategy
        delegates = {d: await self._get((d, None)) for d in strategy_class(key[0]).delegates}
        name, factory = key
        settings = settings_of(name, self.settings)
        strategy = build_strategy(name, settings, self._occupant, factory)
        strategy.bind(delegates)
        if self._on_build is not None:
            self._on_build(key, strategy)
        try:
            await strategy.start()
        except BaseException:
            await strategy.aclose(1.0)
            raise
        self._strategies[key] = strategy
        return strategy

    def peek(self, key: StrategyKey) -> Strategy | None:
        """The strategy ``key`` would get, if it exists already."""
        return self._strategies.get(key)

    def inherit(self, old: StrategySet) -> None:
        """Share ``old``'s strategies whose settings did not change (``old`` keeps them too)."""
        for key, strategy in old._strategies.items():
            delegates = self.closure({key}) - {key}
            if old._settings_of(key) == self._settings_of(key) and all(
                old._strategies.get(d) is self._strategies.get(d) for d in delegates
            ):
                self._strategies[key] = strategy

    def items(self) -> list[tuple[StrategyKey, Strategy]]:
        """Every strategy built so far, with its key."""
        return list(self._strategies.items())

    def retain(self, keys: set[StrategyKey]) -> None:
        """Forget the strategies of other keys (a set that still holds them closes them)."""
        self._strategies = {k: s for k, s in self._strategies.items() if k in keys}

    def __contains__(self, strategy: Strategy) -> bool:
        return any(s is strategy for s in self._strategies.values())

    async def aclose(self, timeout: float, *, keep: StrategySet | None = None) -> None:  # noqa: ASYNC109
        """Close every strategy, each within ``timeout``, except those ``keep`` holds."""
        strategies, self._strategies = list(self._strategies.values()), {}
        if keep is not None:
            strategies = [s for s in strategies if s not in keep]
        results = await asyncio.gather(
            *(s.aclose(timeout) for s in strategies), return_exceptions=True
        )
        for strategy, result in zip(strategies, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("strategy_close_failed", strategy=strategy.name, error=repr(result))
