"""Ticker on a real loop, with real blocking."""

from __future__ import annotations

import asyncio
import time

import pytest
import structlog
from prometheus_client import CollectorRegistry

from loopwatch.daemon.metrics import Metrics
from loopwatch.daemon.ticker import Ticker


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
    assert registry.get_sample_value("loopwatch_tick_drift_seconds") == pytest.approx(
        ticks[-1]["drift"], abs=1e-6
    )
