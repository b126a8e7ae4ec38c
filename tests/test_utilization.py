"""The utilization estimate for loops loopwatch did not make, against the exact figure."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import loopwatch
from loopwatch.causes import run_queue_wait_s
from loopwatch.utilization import EstimatedBusyCollector, selector_of


async def _idle() -> None:
    await asyncio.sleep(100)


async def _cooperative() -> None:
    while True:
        end = time.perf_counter() + 0.005
        while time.perf_counter() < end:
            pass
        await asyncio.sleep(0)


async def _io_on_threads() -> None:
    while True:
        await loopwatch.run_sync(time.sleep, 0.01)


@pytest.mark.parametrize("load", [_idle, _cooperative, _io_on_threads])
def test_the_estimate_is_within_005_of_the_timing_selector(
    load: Callable[[], Awaitable[None]],
) -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        async with loopwatch.watch(CollectorRegistry()) as watcher:
            exact = selector_of(loop)
            assert exact is not None
            estimate = EstimatedBusyCollector(
                threading.get_native_id(), lambda: watcher.watchdog.offcpu_s
            )
            [watchdog] = [t for t in threading.enumerate() if t.name == "loopwatch-watchdog"]
            assert watchdog.native_id is not None
            exact_0, estimate_0, started = exact.busy_s(), estimate.busy_s(), time.perf_counter()
            queued_0, handed_0 = _run_queue_s(), _run_queue_s(watchdog.native_id)
            stolen_0 = _stolen_s()
            task = asyncio.ensure_future(load())
            await asyncio.sleep(1.5)
            task.cancel()
            elapsed = time.perf_counter() - started
            queued.append((_run_queue_s() - queued_0) / elapsed)
            handed.append((_run_queue_s(watchdog.native_id) - handed_0) / elapsed)
            stolen.append(max(b - a for a, b in zip(stolen_0, _stolen_s(), strict=True)) / elapsed)
            return (exact.busy_s() - exact_0) / elapsed, (estimate.busy_s() - estimate_0) / elapsed

    queued: list[float] = []
    handed: list[float] = []
    stolen: list[float] = []
    with asyncio.Runner(loop_factory=loopwatch.new_event_loop) as runner:
        exact, estimate = runner.run(main())
    # The two differ by where a wait for a CPU after the poll returns is counted: idle
    # to the selector, busy to the estimate. Nil on a quiet host; beside CPU hogs, added.
    # And a loop that computes hands the GIL to the watchdog at each of its wakes, then
    # waits, off a CPU, until the watchdog has run: on a busy host, as long as the
    # watchdog waits for a CPU. Time the hypervisor took from the VM's CPUs is hidden
    # from the thread's figures too (CI: 0.18 apart beside 0.07 of the loop's queueing).
    hidden = queued[0] + handed[0] + stolen[0]
    assert abs(exact - estimate) <= 0.05 + hidden, (exact, estimate, queued, handed, stolen)


def _stolen_s() -> list[float]:
    """Seconds the hypervisor has taken from each CPU of this VM (``/proc/stat``)."""
    tick_s = 1 / os.sysconf("SC_CLK_TCK")
    lines = Path("/proc/stat").read_text().splitlines()
    cpus = [line.split() for line in lines if line.startswith("cpu") and line[3].isdigit()]
    return [int(fields[8]) * tick_s for fields in cpus]


def _run_queue_s(native_id: int | None = None) -> float:
    """Seconds this thread (or ``native_id``'s) has waited for a CPU."""
    waited = run_queue_wait_s(native_id or threading.get_native_id())
    assert waited is not None
    return waited
