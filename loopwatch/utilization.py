"""Loop utilization: a selector that times the loop's waits, so busy = wall - idle.

Through public API only: ``asyncio.SelectorEventLoop`` takes any selector. A loop made
by ``new_event_loop()`` can be measured; any other (uvloop, a loop someone else made)
cannot, and ``watch()`` says so once instead of exporting a wrong figure. uvloop runs
its own libuv poll with no hook for it: utilization is not available there.
"""

from __future__ import annotations

import asyncio
import selectors
import weakref
from collections.abc import Iterator
from time import perf_counter
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class TimingSelector(selectors.DefaultSelector):
    """The platform's default selector, with the seconds spent waiting in ``select``.

    Written by the loop thread only; read from scrape threads: ``busy_s`` never goes
    backwards, so a read that races a write cannot look like a counter reset.
    """

    def __init__(self) -> None:
        super().__init__()
        self._started = perf_counter()
        self._idle_s = 0.0
        self._waiting_since: float | None = None
        self._busy_seen = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Wait as the default selector does, timing the wait."""
        start = self._waiting_since = perf_counter()
        try:
            return super().select(timeout)
        finally:
            self._idle_s += perf_counter() - start
            self._waiting_since = None

    def busy_s(self) -> float:
        """Seconds the loop spent outside its selector wait since the selector was made."""
        now = perf_counter()
        idle, waiting = self._idle_s, self._waiting_since
        if waiting is not None:
            idle += now - waiting
        self._busy_seen = max(self._busy_seen, now - self._started - idle)
        return self._busy_seen


_SELECTORS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TimingSelector] = (
    weakref.WeakKeyDictionary()
)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """An asyncio event loop whose utilization loopwatch can measure.

    Use it as ``asyncio.run(main(), loop_factory=loopwatch.new_event_loop)`` (3.12+) or
    ``asyncio.Runner(loop_factory=loopwatch.new_event_loop)`` (3.11).
    """
    selector = TimingSelector()
    loop = asyncio.SelectorEventLoop(selector)
    _SELECTORS[loop] = selector
    return loop


def selector_of(loop: asyncio.AbstractEventLoop) -> TimingSelector | None:
    """The timing selector of a loop made by ``new_event_loop``, else None."""
    return _SELECTORS.get(loop)


class BusyCollector(Collector):
    """``loopwatch_event_loop_busy_seconds_total``, read at scrape time (live while stuck)."""

    def __init__(self, selector: TimingSelector) -> None:
        self._selector = selector

    def collect(self) -> Iterator[Any]:
        """The counter's one sample."""
        family = CounterMetricFamily(
            "loopwatch_event_loop_busy_seconds",
            "Seconds the loop spent outside its selector wait: rate() is utilization, 0-1.",
        )
        family.add_metric([], self._selector.busy_s())
        yield family
