"""Every metric the daemon exports: the library's watch metrics plus workers and pools."""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from daemon import __version__
from loopwatch.metrics import WatchMetrics
from loopwatch.strategies import CooperativeStrategy, PoolStrategy, Strategy
from loopwatch.strategies.set import StrategyKey

DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# Queue waits: microseconds when a pool has room, seconds when it is saturated. Fewer
# edges than durations: one more histogram per worker is the dearest part of a scrape.
QUEUE_WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0)
OUTCOMES = ("ok", "error", "timeout", "cancelled")
Pools = Callable[[], Iterable[tuple[StrategyKey, Strategy]]]


class PoolCollector(Collector):
    """Pool saturation and cooperative yields, read from the strategies at scrape time."""

    def __init__(self) -> None:
        self.source: Pools = tuple

    def collect(self) -> Iterator[Any]:
        """The gauges of every pool, the counters of every cooperative worker."""
        workers = GaugeMetricFamily(
            "loopwatch_executor_workers", "A pool's capacity in calls at once.", labels=["executor"]
        )
        busy = GaugeMetricFamily(
            "loopwatch_executor_busy", "Calls running in the pool.", labels=["executor"]
        )
        queued = GaugeMetricFamily(
            "loopwatch_executor_queued",
            "Calls submitted to the pool, not started.",
            labels=["executor"],
        )
        yields = CounterMetricFamily(
            "loopwatch_cooperative_yields",
            "Times the cooperative strategy gave the loop back during a worker's calls.",
            labels=["worker"],
        )
        for (name, factory), strategy in list(self.source()):
            if isinstance(strategy, PoolStrategy):
                label = [factory or name]
                if strategy.capacity is not None:
                    workers.add_metric(label, strategy.capacity)
                busy.add_metric(label, strategy.busy)
                if (waiting := strategy.queued) is not None:
                    queued.add_metric(label, waiting)
            elif isinstance(strategy, CooperativeStrategy):
                for worker, count in list(strategy.yields.items()):
                    yields.add_metric([worker], count)
        yield from (workers, busy, queued, yields)


class Metrics:
    """The metric objects, created once per registry (a fresh one per test)."""

    def __init__(self, registry: CollectorRegistry, *, loop_name: str = "asyncio") -> None:
        self.registry = registry
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        self.watch = WatchMetrics.on(registry)
        self.tick_drift = Gauge(
            "loopwatch_tick_drift_seconds",
            "How late the last ticker tick came.",
            registry=registry,
        )
        self.task_duration = Histogram(
            "loopwatch_task_duration_seconds",
            "Duration of worker calls, as the worker saw them.",
            ["worker", "strategy"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.task_queue_wait = Histogram(
            "loopwatch_task_queue_wait_seconds",
            "Time from submit to start of a call in its pool, measured where it starts.",
            ["worker", "strategy"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=registry,
        )
        self._wait_children: dict[tuple[str, str], Any] = {}
        self.pools = PoolCollector()
        registry.register(self.pools)
        self.tasks = Counter(
            "loopwatch_tasks",
            "Worker calls finished, by outcome.",
            ["worker", "strategy", "outcome"],
            registry=registry,
        )
        self.tasks_in_flight = Gauge(
            "loopwatch_tasks_in_flight",
            "Worker calls started and not finished.",
            ["worker"],
            registry=registry,
        )
        self.worker_info = Info(
            "loopwatch_worker",
            "The current strategy and target of each worker.",
            ["worker"],
            registry=registry,
        )
        self.config_reloads = Counter(
            "loopwatch_config_reloads",
            "SIGHUP config reloads, by outcome.",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("success", "failure"):
            self.config_reloads.labels(outcome=outcome)
        self.build_info = Info("loopwatch_build", "loopwatch build information.", registry=registry)
        self.build_info.info(
            {
                "version": __version__,
                "python": platform.python_version(),
                "loop": loop_name,
                "implementation": sys.implementation.name,
            }
        )

    def observe_queue_wait(self, worker: str, strategy: str, seconds: float) -> None:
        """A pool call started ``seconds`` after it was submitted."""
        child = self._wait_children.get((worker, strategy))
        if child is None:
            child = self._wait_children[(worker, strategy)] = self.task_queue_wait.labels(
                worker, strategy
            )
        child.observe(seconds)

    def attach(self, _: StrategyKey, strategy: Strategy) -> None:
        """Record what a freshly built strategy measures (StrategySet's on_build hook)."""
        if isinstance(strategy, PoolStrategy):
            strategy.queue_wait = self.observe_queue_wait
