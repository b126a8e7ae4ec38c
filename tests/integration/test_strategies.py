"""Each strategy in a real daemon: the lag histogram shows the difference; faults are counted."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.daemon_process import children_of, histogram_quantile
from tests.helpers import LagFloor, StartDaemon, WriteConfig, tasks_done, wait_tasks, worker_toml
from tests.waiting import poll

pytestmark = pytest.mark.integration
LAG = "loopwatch_event_loop_lag_seconds"


def test_blocking_shows_lag_above_quarter_second(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """``blocking`` I/O holds the loop: lag samples land above 0.25 s, ticks drift."""
    config = write_config(
        worker_toml("io", "loopwatch.daemon.workloads:blocking_io", "blocking", "seconds = 0.3")
    )
    daemon = start_daemon(config)
    daemon.wait_ready()

    def above_quarter() -> bool:
        samples = daemon.scrape()
        late = samples[(f"{LAG}_count", ())] - samples[(f"{LAG}_bucket", (("le", "0.25"),))]
        return late >= 2

    poll(above_quarter, timeout=20, interval=0.1, what="two lag samples above 0.25 s")
    assert daemon.wait_event("tick", lambda e: e["drift"] > 0.25)
    daemon.stop()


def test_process_keeps_lag_p99_under_10ms_while_cpu_work_completes(
    write_config: WriteConfig, start_daemon: StartDaemon, lag_floor: LagFloor
) -> None:
    """CPU work in the process pool completes while loop lag p99 stays under 10 ms."""
    config = write_config(
        worker_toml("cpu", "loopwatch.daemon.workloads:countdown", "process", "n = 3_000_000")
    )
    daemon = start_daemon(config)
    daemon.wait_ready()
    wait_tasks(daemon, "cpu", "process", at_least=6)
    # One busy child leaves the loop a core of this 2-core machine; two would make the
    # OS scheduler, not the daemon, the source of lag.
    p99 = histogram_quantile(daemon.scrape(), LAG, 0.99)
    floor = lag_floor.p99()
    assert p99 <= 0.01 + 2 * floor, f"lag p99 {p99:.4f} s; this machine's own floor {floor:.4f} s"
    daemon.stop()


def test_cooperative_and_executor_strategies_run_generators(
    write_config: WriteConfig, start_daemon: StartDaemon, lag_floor: LagFloor
) -> None:
    """Generators run on ``cooperative`` (sliced) and on a custom Executor (to completion)."""
    config = write_config(
        worker_toml("coop", "loopwatch.daemon.workloads:countdown", "cooperative", "n = 1_000_000")
        + worker_toml(
            "custom",
            "loopwatch.daemon.workloads:json_walk",
            "executor",
            "size_mb = 0.2",
            executor="loopwatch.daemon.executors:daemon_thread_executor",
        )
    )
    daemon = start_daemon(config)
    daemon.wait_ready()
    wait_tasks(daemon, "coop", "cooperative", at_least=3)
    wait_tasks(daemon, "custom", "executor", at_least=3)
    # The custom executor's thread parses JSON holding the GIL while the cooperative
    # worker runs on the loop: they trade the GIL every switch interval (5 ms), so this
    # mix is bounded by a few switch intervals, not by the slice alone. On a loaded host
    # each hand-off of the GIL also waits for a CPU, as the floor's timer does. The run
    # holds 20-30 samples: its p99 is its worst one, and CI's neighbours once made that
    # 218 ms beside a floor of 8 ms (2 hogs here: 45-92 ms, the next worst under 25 ms).
    # The p90 leaves a host two such preemptions.
    p90 = histogram_quantile(daemon.scrape(), LAG, 0.9)
    floor = lag_floor.p99()
    assert p90 <= 0.1 + 5 * floor, f"lag p90 {p90:.4f} s; this machine's own floor {floor:.4f} s"
    daemon.stop()


def test_flaky_failing_and_hanging_targets_are_counted_and_the_daemon_goes_on(
    tmp_path: Path, write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """Errors count as ``error`` with a ``task_failed`` log; overruns as ``timeout``."""
    config = write_config(
        worker_toml("fails", "tests.targets:fail", "thread", 'message = "kaput"')
        + worker_toml(
            "flaky", "tests.targets:flaky", "process", f'every = 2, marker = "{tmp_path}/n"'
        )
        + worker_toml("slow", "tests.targets:hang", "thread", "seconds = 0.5", timeout=0.1)
        + worker_toml("ok", "loopwatch.daemon.workloads:blocking_io", "thread", "seconds = 0.01")
    )
    daemon = start_daemon(config)
    daemon.wait_ready()
    wait_tasks(daemon, "fails", "thread", outcome="error", at_least=2)
    wait_tasks(daemon, "flaky", "process", outcome="error", at_least=2)
    wait_tasks(daemon, "flaky", "process", at_least=2)
    wait_tasks(daemon, "slow", "thread", outcome="timeout", at_least=2)
    wait_tasks(daemon, "ok", "thread", at_least=10)
    failed = daemon.wait_event("task_failed", lambda e: e["worker"] == "fails")
    assert failed["error"] == "RuntimeError: kaput"
    daemon.wait_event(
        "task_failed", lambda e: e["worker"] == "slow" and "TimeoutError" in e["error"]
    )
    # A timed-out thread call holds its slot until it really ends: never more threads
    # busy than the worker's concurrency.
    assert (daemon.value("loopwatch_tasks_in_flight", worker="slow") or 0) <= 1
    assert daemon.stop() == 0


def test_pool_child_killed_counts_one_error_and_the_pool_is_replaced(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """SIGKILL of a busy pool child: that call is an ``error``; later calls succeed."""
    config = write_config(
        worker_toml("cpu", "tests.targets:block", "process", "seconds = 0.3", concurrency=2)
    )
    daemon = start_daemon(config)
    daemon.wait_ready()
    wait_tasks(daemon, "cpu", "process", at_least=2)
    pool_children = [kid for server in children_of(daemon.pid) for kid in children_of(server)]
    assert pool_children, "no pool children found"
    os.kill(pool_children[0], signal.SIGKILL)
    daemon.wait_event("process_pool_replaced")
    wait_tasks(daemon, "cpu", "process", outcome="error")
    # Replacing the broken pool happens off the loop (on 3.12 its shutdown blocked for seconds).
    assert daemon.value("loopwatch_event_loop_stalls_total") == 0
    ok_before = tasks_done(daemon, "cpu", "process", "ok")
    wait_tasks(daemon, "cpu", "process", at_least=ok_before + 4)
    assert daemon.stop() == 0


def test_worker_in_a_pool_child_that_exits_hard(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """A target that kills its own pool process every time: errors, back-off, daemon lives."""
    config = write_config(
        worker_toml("suicide", "tests.targets:die", "process")
        + worker_toml("ok", "loopwatch.daemon.workloads:blocking_io", "thread", "seconds = 0.01")
    )
    daemon = start_daemon(config)
    daemon.wait_ready()
    wait_tasks(daemon, "suicide", "process", outcome="error", at_least=3)
    before = tasks_done(daemon, "ok", "thread", "ok")
    time.sleep(0.2)
    assert (tasks_done(daemon, "ok", "thread", "ok")) > before
    assert daemon.stop() == 0
