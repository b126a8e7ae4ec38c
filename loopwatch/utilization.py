"""Loop utilization: a selector that times the loop's waits, so busy = wall - idle.

Through public API only: ``asyncio.SelectorEventLoop`` takes any selector. A loop made
by ``new_event_loop()`` is measured exactly. Any other (uvloop, which runs its own
libuv poll with no hook for it, or an asyncio loop someone else made, such as uvicorn's)
gets an estimate from counters that are right whenever they are read: the loop thread's
seconds on a CPU and waiting for one (``schedstat``), plus the stall seconds it spent
blocked (in a call, or waiting for the GIL). Sampling the loop thread's state from
another Python thread instead is biased: that thread only runs when the loop lets go of
the GIL, mostly while it waits in its poll (measured: a loop busy 80% of the time read 6%).
"""

from __future__ import annotations

import asyncio
import selectors
import weakref
from collections.abc import Callable, Iterator
from time import perf_counter
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from loopwatch.causes import schedstat


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

    def busy_s(self) -> float:
        """Seconds the loop was busy since its selector was made."""
        return self._selector.busy_s()

    def collect(self) -> Iterator[Any]:
        """The counter's one sample."""
        family = CounterMetricFamily(
            "loopwatch_event_loop_busy_seconds",
            "Seconds the loop spent outside its selector wait: rate() is utilization, 0-1.",
        )
        family.add_metric([], self._selector.busy_s())
        yield family


class EstimatedBusyCollector(Collector):
    """``loopwatch_event_loop_busy_seconds_total`` for a loop without a timing selector.

    Busy = the loop thread's seconds on a CPU and waiting for one (``schedstat``: a
    loop the host does not run is busy to the timing selector too) + ``offcpu_s()``, the
    other seconds of stalls it spent off the CPU. Missed: blocking waits on the loop
    shorter than the stall threshold. Counted although idle: the poll's own CPU time.
    """

    def __init__(self, native_id: int, offcpu_s: Callable[[], float]) -> None:
        self._native_id = native_id
        self._offcpu_s = offcpu_s
        self._seen = 0.0

    def busy_s(self) -> float:
        """The estimate now; never lower than an earlier one (it is a counter)."""
        found = schedstat(self._native_id)
        if found is None:  # the loop's thread ended: the counter stays
            return self._seen
        on_cpu, waiting = found
        self._seen = max(self._seen, on_cpu + waiting + self._offcpu_s())
        return self._seen

    def collect(self) -> Iterator[Any]:
        """The counter's one sample."""
        family = CounterMetricFamily(
            "loopwatch_event_loop_busy_seconds",
            "Seconds the loop was busy, estimated (not a loopwatch.new_event_loop() loop: "
            "uvloop, or one made elsewhere): its thread's seconds on or waiting for a CPU, "
            "plus stall seconds blocked; blocking waits shorter than the stall threshold "
            "are missed. "
            "rate() is utilization, 0-1.",
        )
        family.add_metric([], self.busy_s())
        yield family
