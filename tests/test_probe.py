"""LagProbe on a real loop, with real blocking."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from loopwatch.metrics import WatchMetrics
from loopwatch.probe import LagProbe


def lag_count(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("loopwatch_event_loop_lag_seconds_count") or 0.0


async def test_probe_samples_and_measures_a_block(registry: CollectorRegistry) -> None:
    """Idle samples are sub-10 ms; a 150 ms block shows as one sample of about 150 ms."""
    probe = LagProbe(WatchMetrics(registry).event_loop_lag, 0.01, 0.1)
    probe.start(asyncio.get_running_loop())
    await asyncio.sleep(0.2)
    assert lag_count(registry) >= 5
    assert probe.recent_quantile(0.5) < 0.01
    time.sleep(0.15)  # block the loop
    await asyncio.sleep(0.05)
    probe.stop()
    assert 0.13 <= max(probe.recent) <= 0.2
    beat, lag = probe.last_long_lag
    assert lag == max(probe.recent)
    assert beat > 0
    over_100ms = lag_count(registry) - (
        registry.get_sample_value("loopwatch_event_loop_lag_seconds_bucket", {"le": "0.1"}) or 0
    )
    assert over_100ms == 1


async def test_lowering_the_resolution_reschedules_at_once(registry: CollectorRegistry) -> None:
    """A reload from a 1 s to a 10 ms period must not look like a 1 s stall."""
    probe = LagProbe(WatchMetrics(registry).event_loop_lag, 1.0, 2.0)
    probe.start(asyncio.get_running_loop())
    await asyncio.sleep(0.05)
    probe.reconfigure(0.01, 0.1)
    before = probe.last_beat
    overdue = time.perf_counter() - probe.last_beat - probe.resolution_s
    assert overdue < 0.1
    await asyncio.sleep(0.1)
    probe.stop()
    assert probe.last_beat > before
    assert max(probe.recent) < 0.05
