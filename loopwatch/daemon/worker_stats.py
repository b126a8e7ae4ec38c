"""Per-worker call statistics: plain numbers on the hot path, metric text at scrape time.

Each call updates a few ints and floats of its worker's ``WorkerStats`` on the loop
thread: no lock, no metric object (a prometheus-client histogram observation takes
locks and costs ~1.5 us; a call through a thread pool costs ~30 us in all). Scrape
threads read them: a read can miss the call in progress, never corrupt a count, and
each histogram's count is computed from its own buckets, so they always agree.

The same numbers reach Prometheus two ways: ``WorkerCollector.collect`` for anything
that reads the registry (prometheus-client's own exposition, ``get_sample_value``), and
``WorkerCollector.exposition``, which writes the text format directly, several times
faster for hundreds of workers (worker names are ``[A-Za-z0-9_.-]``: nothing to escape).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

# Alerts and dashboards read p50/p99 from these edges.
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# Queue waits: microseconds when a pool has room, seconds when it is saturated. Fewer
# edges than durations: every edge is a series per worker in every scrape.
QUEUE_WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0)
OUTCOMES = ("ok", "error", "timeout", "cancelled")
_OUTCOME_INDEX = {o: i for i, o in enumerate(OUTCOMES)}

_HELP = {
    "loopwatch_task_duration_seconds": "Duration of worker calls, as the worker saw them.",
    "loopwatch_task_queue_wait_seconds": (
        "Time from submit to start of a call in its pool, measured where it starts."
    ),
    "loopwatch_tasks_total": "Worker calls finished, by outcome.",
    "loopwatch_tasks_in_flight": "Worker calls started and not finished.",
}


class Buckets:
    """A histogram as plain numbers: counts per bucket (the last one is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` (loop thread only)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[int]:
        """Counts at or below each bound, then the count of all (+Inf)."""
        out, running = [], 0
        for count in list(self.counts):
            running += count
            out.append(running)
        return out


class WorkerStats:
    """The numbers of one (worker, strategy): outcomes, durations, queue waits, in flight."""

    __slots__ = ("duration", "in_flight", "live", "outcomes", "queue_wait", "strategy", "worker")

    def __init__(self, worker: str, strategy: str) -> None:
        self.worker = worker
        self.strategy = strategy
        self.outcomes = [0] * len(OUTCOMES)
        self.duration = Buckets(DURATION_BUCKETS)
        self.queue_wait = Buckets(QUEUE_WAIT_BUCKETS)
        self.in_flight = 0
        self.live = True  # a removed worker keeps its counters, loses its in-flight gauge

    def finished(self, outcome: str, seconds: float) -> None:
        """One call ended (loop thread only)."""
        self.outcomes[_OUTCOME_INDEX[outcome]] += 1
        self.duration.observe(seconds)


_rendering = threading.local()


@contextmanager
def fast_exposition() -> Iterator[None]:
    """While the endpoint writes the worker metrics itself, ``collect`` yields none of them."""
    _rendering.active = True
    try:
        yield
    finally:
        _rendering.active = False


class WorkerCollector(Collector):
    """Every ``WorkerStats`` as the four worker metric families."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str], WorkerStats] = {}
        self._lock = threading.Lock()

    def stats(self, worker: str, strategy: str) -> WorkerStats:
        """The numbers of (worker, strategy), made on first use and kept after."""
        with self._lock:
            found = self._stats.get((worker, strategy))
            if found is None:
                found = self._stats[(worker, strategy)] = WorkerStats(worker, strategy)
            for other in self._stats.values():  # a strategy switch: one in-flight gauge
                other.live = other is found or (other.worker != worker and other.live)
            return found

    def _all(self) -> list[WorkerStats]:
        with self._lock:
            return list(self._stats.values())

    def collect(self) -> Iterator[Any]:
        """The families, for prometheus-client's exposition and ``get_sample_value``."""
        if getattr(_rendering, "active", False):
            return
        labels = ["worker", "strategy"]
        tasks = CounterMetricFamily(
            "loopwatch_tasks", _HELP["loopwatch_tasks_total"], labels=[*labels, "outcome"]
        )
        duration = HistogramMetricFamily(
            "loopwatch_task_duration_seconds",
            _HELP["loopwatch_task_duration_seconds"],
            labels=labels,
        )
        wait = HistogramMetricFamily(
            "loopwatch_task_queue_wait_seconds",
            _HELP["loopwatch_task_queue_wait_seconds"],
            labels=labels,
        )
        in_flight = GaugeMetricFamily(
            "loopwatch_tasks_in_flight", _HELP["loopwatch_tasks_in_flight"], labels=["worker"]
        )
        for s in self._all():
            key = [s.worker, s.strategy]
            for outcome, count in zip(OUTCOMES, list(s.outcomes), strict=True):
                tasks.add_metric([*key, outcome], count)
            for family, buckets in ((duration, s.duration), (wait, s.queue_wait)):
                if family is wait and not any(s.queue_wait.counts):
                    continue  # on-loop strategies have no queue
                cumulative = buckets.cumulative()
                edges = _edges(buckets.bounds)
                family.add_metric(key, list(zip(edges, cumulative, strict=True)), buckets.total)
            if s.live:
                in_flight.add_metric([s.worker], s.in_flight)
        yield from (tasks, duration, wait, in_flight)

    def forget(self, worker: str) -> None:
        """A removed worker: its counters stay, its in-flight gauge goes."""
        with self._lock:
            for (name, _), s in self._stats.items():
                if name == worker:
                    s.live = False

    def exposition(self) -> bytes:
        """The same families in the Prometheus text format (0.0.4), written directly."""
        out: list[str] = []
        everyone = self._all()
        out.append(f"# HELP loopwatch_tasks_total {_HELP['loopwatch_tasks_total']}\n")
        out.append("# TYPE loopwatch_tasks_total counter\n")
        for s in everyone:
            key = f'worker="{s.worker}",strategy="{s.strategy}"'
            for outcome, count in zip(OUTCOMES, list(s.outcomes), strict=True):
                out.append(f'loopwatch_tasks_total{{{key},outcome="{outcome}"}} {count}.0\n')
        for name, attribute in (
            ("loopwatch_task_duration_seconds", "duration"),
            ("loopwatch_task_queue_wait_seconds", "queue_wait"),
        ):
            out.append(f"# HELP {name} {_HELP[name]}\n# TYPE {name} histogram\n")
            for s in everyone:
                buckets: Buckets = getattr(s, attribute)
                cumulative = buckets.cumulative()
                if attribute == "queue_wait" and not cumulative[-1]:
                    continue
                key = f'worker="{s.worker}",strategy="{s.strategy}"'
                for edge, count in zip(_edges(buckets.bounds), cumulative, strict=True):
                    out.append(f'{name}_bucket{{{key},le="{edge}"}} {count}.0\n')
                out.append(f"{name}_count{{{key}}} {cumulative[-1]}.0\n")
                out.append(f"{name}_sum{{{key}}} {_number(buckets.total)}\n")
        out.append(f"# HELP loopwatch_tasks_in_flight {_HELP['loopwatch_tasks_in_flight']}\n")
        out.append("# TYPE loopwatch_tasks_in_flight gauge\n")
        out.extend(
            f'loopwatch_tasks_in_flight{{worker="{s.worker}"}} {s.in_flight}.0\n'
            for s in everyone
            if s.live
        )
        return "".join(out).encode()


_EDGES: dict[tuple[float, ...], list[str]] = {}


def _edges(bounds: tuple[float, ...]) -> list[str]:
    found = _EDGES.get(bounds)
    if found is None:
        found = _EDGES[bounds] = [*map(_number, bounds), "+Inf"]
    return found


def _number(value: float) -> str:
    """A float as the text format writes it (``1.0``, ``0.0005``, ``+Inf``)."""
    if value == float("inf"):
        return "+Inf"
    return repr(float(value))
