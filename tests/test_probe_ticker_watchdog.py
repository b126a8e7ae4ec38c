"""LagProbe, Ticker and StallWatchdog on a real loop, with real blocking."""

from __future__ import annotations

import asyncio
import time

import structlog
from prometheus_client import CollectorRegistry

from daemon.metrics import Metrics
from daemon.probe import LagProbe
from daemon.ticker import Ticker
from daemon.watchdog import Occupant, StallWatchdog, capture_stack


def lag_count(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("loopwatch_event_loop_lag_seconds_count") or 0.0


async def test_probe_samples_and_measures_a_block(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    """Idle samples are sub-10 ms; a 150 ms block shows as one sample of about 150 ms."""
    probe = LagProbe(metrics.event_loop_lag, 0.01, 0.1)
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


async def test_ticker_logs_drift_and_skips_missed_ticks(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    """Ticks log ``drift``; a block longer than the interval reports ``missed``."""
    ticker = Ticker(metrics.tick_drift, 0.05)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(ticker.run())
        await asyncio.sleep(0.12)
        time.sleep(0.2)
        await asyncio.sleep(0.08)
        task.cancel()
    ticks = [e for e in logs if e["event"] == "tick"]
    assert len(ticks) >= 3
    assert max(e["drift"] for e in ticks) >= 0.1
    assert max(e["missed"] for e in ticks) >= 2
    assert (registry.get_sample_value("loopwatch_tick_drift_seconds") or 0) >= 0


async def test_watchdog_sees_a_stall_live_and_logs_it_with_the_stack(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    """The gauge reads the stall while it lasts; afterwards one ``stall`` event names us."""
    probe = LagProbe(metrics.event_loop_lag, 0.01, 0.05)
    occupant = Occupant()
    watchdog = StallWatchdog(probe, metrics.event_loop_stall, metrics.event_loop_stalls, occupant)
    probe.start(asyncio.get_running_loop())
    watchdog.start()
    live: list[float] = []
    with structlog.testing.capture_logs() as logs:
        await asyncio.sleep(0.05)
        occupant.worker = "me"
        deadline = time.perf_counter() + 0.3
        while time.perf_counter() < deadline:
            live.append(watchdog.current_stall_s())
            time.sleep(0.01)
        occupant.worker = None
        await asyncio.sleep(0.1)
        watchdog.stop()
    probe.stop()
    stalls = [e for e in logs if e["event"] == "stall"]
    assert len(stalls) == 1
    assert stalls[0]["worker"] == "me"
    assert abs(stalls[0]["duration"] - 0.3) < 0.03
    assert stalls[0]["stack"][-1].endswith(
        " test_watchdog_sees_a_stall_live_and_logs_it_with_the_stack"
    )
    assert max(live) > 0.2
    assert registry.get_sample_value("loopwatch_event_loop_stalls_total") == 1
    assert registry.get_sample_value("loopwatch_event_loop_stall_seconds") == 0


def test_capture_stack_cuts_plumbing() -> None:
    """Stacks are innermost-last ``file:line function`` lines without asyncio frames."""
    import threading

    stack = capture_stack(threading.get_ident())
    assert stack[-1].endswith(" test_capture_stack_cuts_plumbing")
    assert all(":" in line and " " in line for line in stack)
