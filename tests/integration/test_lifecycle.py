"""Lifecycle scenarios of a real ``loopwatch run`` process."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.daemon_process import session_members
from tests.helpers import StartDaemon, WriteConfig, no_process_left, run_loopwatch, wait_tasks
from tests.waiting import poll

pytestmark = pytest.mark.integration

WORKERS = """
[shutdown]
timeout = 5.0
[[workers]]
name = "io"
target = "loopwatch.daemon.workloads:blocking_io"
kwargs = { seconds = 0.05 }
strategy = "thread"
concurrency = 2
[[workers]]
name = "cpu"
target = "loopwatch.daemon.workloads:countdown"
kwargs = { n = 200_000 }
strategy = "process"
"""


def test_1_starts_serves_metrics_and_stops_on_sigterm(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """1. It starts, serves every contract metric, ticks, and exits 0 on SIGTERM."""
    daemon = start_daemon(write_config(WORKERS + "\n[ticker]\ninterval = 0.2\n"))
    startup = daemon.wait_ready()
    assert startup["metrics"] == f"http://127.0.0.1:{daemon.port}/metrics"
    tick = daemon.wait_event("tick")
    assert isinstance(tick["drift"], float)
    wait_tasks(daemon, "io", "thread", at_least=2)
    wait_tasks(daemon, "cpu", "process")
    text = daemon.scrape_text()
    samples = {name for name, _ in daemon.scrape()}  # samples, not HELP or TYPE lines
    for name in (
        "loopwatch_event_loop_lag_seconds_bucket",
        "loopwatch_event_loop_stall_seconds",
        "loopwatch_event_loop_stalls_total",
        "loopwatch_tick_drift_seconds",
        "loopwatch_task_duration_seconds_bucket",
        "loopwatch_tasks_in_flight",
        "loopwatch_worker_info",
        "loopwatch_config_reloads_total",
        "loopwatch_build_info",
        "process_resident_memory_bytes",
        "python_info",
    ):
        assert name in samples, name
    assert "_created" not in text
    for edge in (
        "0.001",
        "0.0025",
        "0.005",
        "0.01",
        "0.025",
        "0.05",
        "0.1",
        "0.25",
        "0.5",
        "1.0",
        "2.5",
        "5.0",
        "10.0",
    ):
        assert f'loopwatch_event_loop_lag_seconds_bucket{{le="{edge}"}}' in text, edge
    assert daemon.stop() == 0
    assert daemon.named("shutdown")
    no_process_left(daemon)
    # A clean stop is no warning: aiorun's "Stopping the loop" is demoted to info.
    stopping = [e for e in daemon.events if "Stopping the loop" in str(e.get("event"))]
    assert stopping
    assert all(e["level"] == "info" for e in stopping), stopping


def test_2_sigint_drains_in_flight_calls_and_leaves_no_child(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """2. SIGINT while every worker is mid-call: calls drain, exit 0 in time, no child left."""
    config = write_config(
        WORKERS.replace("seconds = 0.05", "seconds = 1.0").replace("n = 200_000", "n = 20_000_000")
    )
    daemon = start_daemon(config)
    daemon.wait_ready()
    daemon.wait_value("loopwatch_tasks_in_flight", lambda v: v >= 2, worker="io")
    started = time.monotonic()
    daemon.signal(signal.SIGINT)
    assert daemon.wait_exit(10) == 0
    assert time.monotonic() - started < 5.0 + 1.0
    shutdown = daemon.wait_event("shutdown")
    assert shutdown["in_flight_at_signal"] >= 2
    no_process_left(daemon)


def test_sigterm_to_the_whole_process_group_exits_cleanly(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """``timeout`` and some supervisors signal the group: the pool's children die first.

    #33: the forkserver died with the daemon still draining: BrokenProcessPool in the
    process worker's calls, and an unhandled thread exception at shutdown.
    """
    config = write_config(WORKERS.replace("n = 200_000", "n = 2_000_000"))
    daemon = start_daemon(config)
    daemon.wait_ready()
    daemon.wait_value("loopwatch_tasks_in_flight", lambda v: v >= 1, worker="cpu")
    os.killpg(daemon.pid, signal.SIGTERM)
    assert daemon.wait_exit(15) == 0
    output = "\n".join(daemon.raw)
    assert "Traceback" not in output
    assert "Exception in thread" not in output
    assert not [e for e in daemon.events if e.get("level") == "error"], [
        e for e in daemon.events if e.get("level") == "error"
    ]
    no_process_left(daemon)


def test_3_calls_past_the_drain_deadline_are_cancelled_not_waited_for(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """3. Hanging calls on threads and processes: exit 0 within timeout + 1 s, nothing left."""
    config = write_config(
        """
[shutdown]
timeout = 1.0
[[workers]]
name = "hang-thread"
target = "tests.targets:hang"
strategy = "thread"
[[workers]]
name = "hang-process"
target = "tests.targets:hang"
strategy = "process"
"""
    )
    daemon = start_daemon(config)
    daemon.wait_ready()
    daemon.wait_value("loopwatch_tasks_in_flight", lambda v: v >= 1, worker="hang-process")
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    daemon.signal(signal.SIGTERM)  # a second signal neither is needed nor hangs it
    assert daemon.wait_exit(15) == 0
    assert time.monotonic() - started < 1.0 + 2.5
    no_process_left(daemon)
    assert daemon.named("shutdown_stragglers")


def test_4_bad_config_exits_78_before_binding(tmp_path: Path, write_config: WriteConfig) -> None:
    """4. A bad config exits 78 with the key path and never binds the port."""
    config = write_config(
        '[[workers]]\nname = "x"\ntarget = "loopwatch.daemon.workloads:countdown"\nstrategy = "teleport"\n'
    )
    result = run_loopwatch("run", "-c", str(config), timeout=30)
    assert result.returncode == 78
    assert "workers[0].strategy" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_5_taken_port_exits_69_before_workers_start(write_config: WriteConfig, port: int) -> None:
    """5. A port already in use is a clear error (exit 69) before any worker starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        config = write_config(WORKERS)
        result = run_loopwatch("run", "-c", str(config), timeout=30)
    assert result.returncode == 69
    assert "startup_failed" in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_6_sigkill_leaves_nothing_that_blocks_a_restart(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """6. After SIGKILL the same port binds again at once, and pool children go away."""
    config = write_config(WORKERS)
    first = start_daemon(config)
    first.wait_ready()
    wait_tasks(first, "io", "thread")
    os.kill(first.pid, signal.SIGKILL)
    first.wait_exit(10)
    second = start_daemon(config)
    second.wait_ready()
    assert second.stop() == 0
    poll(lambda: session_members(first.pid) == [], what="the first daemon's session gone")


def test_7_uvloop_is_selected_by_config(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """7. ``[daemon] loop = "uvloop"`` runs on uvloop; the probe still measures (perf_counter)."""
    daemon = start_daemon(write_config('[daemon]\nloop = "uvloop"\n' + WORKERS))
    assert daemon.wait_ready()["loop"] == "uvloop"
    daemon.wait_value("loopwatch_event_loop_lag_seconds_count", lambda v: v >= 20)
    assert 'loop="uvloop"' in daemon.scrape_text()
    wait_tasks(daemon, "cpu", "process")
    assert daemon.stop() == 0
    no_process_left(daemon)


def test_too_few_file_descriptors_at_start_exits_69_naming_the_limit(tmp_path: Path) -> None:
    """``ulimit -n 12``: the native dump's pipe fails. Not a daemon without workers."""
    config = tmp_path / "loopwatch.toml"
    config.write_text("[metrics]\nport = 0\n" + WORKERS)
    done = run_with_open_files(config, 12)
    assert done.returncode == 69, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    [failed] = [line for line in done.stderr.splitlines() if "startup_failed" in line]
    assert "RLIMIT_NOFILE" in failed or "open files" in failed
    assert "12" in failed


def test_running_out_of_file_descriptors_while_starting_exits_69(tmp_path: Path) -> None:
    """60 process children in 64 descriptors: the pool's start fails, the daemon says why."""
    config = tmp_path / "loopwatch.toml"
    config.write_text(
        "[metrics]\nport = 0\n[executors.process]\nmax_workers = 60\n[[workers]]\n"
        'name = "cpu"\ntarget = "loopwatch.daemon.workloads:countdown"\nstrategy = "process"\n'
    )
    done = run_with_open_files(config, 64)
    assert done.returncode == 69, done.stderr[-2000:]
    [failed] = [line for line in done.stderr.splitlines() if "startup_failed" in line]
    assert "RLIMIT_NOFILE, is 64" in failed


def run_with_open_files(config: Path, limit: int) -> subprocess.CompletedProcess[str]:
    """``loopwatch run -c config`` to its end, under ``ulimit -n limit``."""

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "loopwatch.daemon", "run", "-c", str(config)],
        capture_output=True, text=True, timeout=60, preexec_fn=low_limit, check=False,
    )  # fmt: skip
