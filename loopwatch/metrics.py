"""The metrics of watching a loop, on an injectable registry."""

from __future__ import annotations

import threading
import weakref

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# Alerts and dashboards rely on the edges from 1 ms to 10 s; the sub-millisecond ones
# show the idle noise floor (~0.2 ms) apart from real lag.
LAG_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class WatchMetrics:
    """Lag, stalls, what blocked the loop, and how busy it was: one set per registry.

    Use ``WatchMetrics.on(registry)`` to share the set already registered there, so that
    watching twice (or restarting a watch) never registers a name twice.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.event_loop_lag = Histogram(
            "loopwatch_event_loop_lag_seconds",
            "How late the lag probe's timer fired: time the loop could not run callbacks.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.event_loop_stall = Gauge(
            "loopwatch_event_loop_stall_seconds",
            "Length of the stall in progress, 0 when the loop is responsive.",
            registry=registry,
        )
        self.event_loop_stalls = Counter(
            "loopwatch_event_loop_stalls",
            "Stalls (the loop unresponsive past the threshold), counted when first seen.",
            registry=registry,
        )
        self.event_loop_blocked = Counter(
            "loopwatch_event_loop_blocked_seconds",
            'Stall seconds attributed to a worker ("" for none) and a cause, when it ended.',
            ["worker", "cause"],
            registry=registry,
        )

    @classmethod
    def on(cls, registry: CollectorRegistry | None = None) -> WatchMetrics:
        """The set registered on ``registry`` (prometheus_client.REGISTRY when None)."""
        registry = REGISTRY if registry is None else registry
        with _LOCK:
            metrics = _BY_REGISTRY.get(registry)
            if metrics is None:
                metrics = _BY_REGISTRY[registry] = cls(registry)
            return metrics


_LOCK = threading.Lock()
_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, WatchMetrics] = (
    weakref.WeakKeyDictionary()
)
