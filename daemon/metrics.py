"""Every metric the daemon exports: the library's watch metrics plus workers and pools."""

from __future__ import annotations

import platform
import sys

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from daemon import __version__
from loopwatch.metrics import WatchMetrics

DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
OUTCOMES = ("ok", "error", "timeout", "cancelled")


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
