"""Ticker: the tutorial's detector, a log line every interval with how late it came."""

from __future__ import annotations

import asyncio
import time
from time import perf_counter
from typing import Protocol

import structlog

log = structlog.get_logger("loopwatch.ticker")


class GaugeLike(Protocol):
    """What the ticker needs of a gauge."""

    def set(self, value: float) -> None:
        """Set the gauge to ``value``."""


class Ticker:
    """Wakes every ``interval_s``, logs ``tick`` with ``drift`` and sets the drift gauge.

    Ticks are scheduled on a fixed grid, so one late tick does not shift all later
    ones; after a stall longer than an interval the missed ticks are skipped, counted
    in ``missed``, not replayed in a burst.
    """

    def __init__(self, gauge: GaugeLike, interval_s: float) -> None:
        self._gauge = gauge
        self.interval_s = interval_s
        self.ticks = 0

    async def run(self) -> None:
        """Tick until cancelled."""
        due = perf_counter() + self.interval_s
        while True:
            await asyncio.sleep(max(0.0, due - perf_counter()))
            now = perf_counter()
            drift = now - due
            missed = int(drift // self.interval_s)
            self.ticks += 1
            self._gauge.set(drift)
            log.info("tick", time=time.time(), drift=round(drift, 6), missed=missed)
            due += (missed + 1) * self.interval_s
