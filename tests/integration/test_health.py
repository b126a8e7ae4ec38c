"""Loop and pool health on a real daemon: utilization, saturation, queue wait, yields."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.daemon_process import DaemonProcess
from tests.helpers import StartDaemon, WriteConfig, worker_toml

pytestmark = pytest.mark.integration


def utilization(
    daemon: DaemonProcess, done: Callable[[float], bool], at_least: float = 0.5
) -> float:
    """rate(loopwatch_event_loop_busy_seconds_total), as Prometheus would take it, over a
    span that grows from ``at_least`` seconds until ``done(rate)`` (or 10 s)."""
    before, started = daemon.value("loopwatch_event_loop_busy_seconds_total"), time.monotonic()
    assert before is not None
    while True:
        time.sleep(0.1)
        after, now = daemon.value("loopwatch_event_loop_busy_seconds_total"), time.monotonic()
        assert after is not None
        rate = (after - before) / (now - started)
        if (now - started >= at_least and done(rate)) or now - started > 10:
            return rate


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_utilization_is_near_0_idle_and_near_1_under_a_cooperative_cpu_worker(
    write_config: WriteConfig, start_daemon: StartDaemon, loop: str
) -> None:
    """Busy seconds count the time outside the selector wait (uvloop: estimated): 0-1."""
    section = f'[daemon]\nloop = "{loop}"\n'
    idle = start_daemon(
        write_config(
            section + worker_toml("io", "tests.targets:block", "thread", {"seconds": 0.05})
        )
    )
    idle.wait_ready()
    # I/O on threads: the loop only hands calls over (over a second: no event ends a calm)
    assert utilization(idle, lambda _: True, at_least=1.0) < 0.1
    assert idle.stop() == 0
    busy = start_daemon(
        write_config(
            section
            + worker_toml(
                "coop", "loopwatch.daemon.workloads:countdown", "cooperative", {"n": 50_000_000}
            )
        )
    )
    busy.wait_ready()
    assert utilization(busy, lambda rate: rate > 0.8) > 0.8
    yields = busy.wait_value("loopwatch_cooperative_yields_total", lambda v: v > 50, worker="coop")
    assert yields > 50
    assert busy.stop() == 0


@pytest.mark.parametrize("strategy", ["thread", "process"])
def test_a_saturated_pool_shows_busy_queued_and_queue_wait(
    write_config: WriteConfig, start_daemon: StartDaemon, strategy: str
) -> None:
    """2 slots, 10 concurrent 0.1 s calls: 2 busy, the rest queued, waits about 0.4 s."""
    daemon = start_daemon(
        write_config(
            f"[executors.{strategy}]\nmax_workers = 2\n"
            + worker_toml("w", "tests.targets:block", strategy, {"seconds": 0.1}, concurrency=10)
        )
    )
    daemon.wait_ready()
    daemon.wait_value(
        "loopwatch_task_queue_wait_seconds_count",
        lambda v: v >= 40,
        worker="w",
        strategy=strategy,
        timeout=30,
    )
    samples = daemon.scrape()
    assert samples[("loopwatch_executor_workers", (("executor", strategy),))] == 2
    assert samples[("loopwatch_executor_busy", (("executor", strategy),))] == 2
    assert 5 <= samples[("loopwatch_executor_queued", (("executor", strategy),))] <= 8
    labels = (("strategy", strategy), ("worker", "w"))
    count = samples[("loopwatch_task_queue_wait_seconds_count", labels)]
    mean = samples[("loopwatch_task_queue_wait_seconds_sum", labels)] / count
    assert 0.25 <= mean <= 0.55, mean
    assert daemon.stop() == 0
