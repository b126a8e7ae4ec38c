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
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from loopwatch.daemon import __version__
from loopwatch.daemon.strategy_set import StrategyKey
from loopwatch.daemon.worker_stats import Buckets, WorkerCollector
from loopwatch.metrics import WatchMetrics
from loopwatch.strategies import Strategy

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
            gauges = strategy.gauges()
            if gauges is not None:
                label = [factory or name]
                if gauges.capacity is not None:
                    workers.add_metric(label, gauges.capacity)
                busy.add_metric(label, gauges.busy)
                if gauges.queued is not None:
                    queued.add_metric(label, gauges.queued)
            for worker, count in list(strategy.yields().items()):
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
        # Worker call statistics: plain numbers on the hot path (see worker_stats).
        self.workers = WorkerCollector()
        registry.register(self.workers)
        self._wait_buckets: dict[tuple[str, str], Buckets] = {}
        self.pools = PoolCollector()
        registry.register(self.pools)
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
        """A pool call started ``seconds`` after it was submitted (loop thread)."""
        buckets = self._wait_buckets.get((worker, strategy))
        if buckets is None:
            buckets = self.workers.stats(worker, strategy).queue_wait
            self._wait_buckets[(worker, strategy)] = buckets
        buckets.observe(seconds)

    def attach(self, _: StrategyKey, strategy: Strategy) -> None:
        """Record what a freshly built strategy measures (StrategySet's on_build hook)."""
        strategy.queue_wait = self.observe_queue_wait
