"""The stall watchdog on a real daemon: live gauge, stack, worker, duration, no false alarms."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from tests.conftest import StartDaemon, WriteConfig

pytestmark = pytest.mark.integration


def blocking_worker(seconds: float, interval: float = 0.5, target: str = "block") -> str:
    return f"""
[[workers]]
name = "stuck"
target = "tests.targets:{target}"
kwargs = {{ seconds = {seconds} }}
strategy = "blocking"
interval = {interval}
"""


def test_stall_event_names_module_function_and_worker(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """A 0.3 s block on the loop logs one stall with the culprit's frame and the worker."""
    daemon = start_daemon(write_config(blocking_worker(0.3)))
    daemon.wait_ready()
    stall = daemon.wait_event("stall")
    assert stall["worker"] == "stuck"
    assert abs(stall["duration"] - 0.3) <= 0.02, stall["duration"]
    assert "tests/targets.py" in stall["stack"][-1]
    assert stall["stack"][-1].endswith(" block")
    assert not any("asyncio/" in frame for frame in stall["stack"])
    daemon.wait_value("loopwatch_event_loop_stalls_total", lambda v: v >= 1)
    assert daemon.stop() == 0


def test_cpu_bound_culprit_is_named(write_config: WriteConfig, start_daemon: StartDaemon) -> None:
    """A CPU-bound block (holding the GIL) is caught and named as well."""
    daemon = start_daemon(write_config(blocking_worker(0.25, target="spin")))
    daemon.wait_ready()
    stall = daemon.wait_event("stall")
    assert stall["stack"][-1].endswith(" spin"), stall["stack"]
    assert abs(stall["duration"] - 0.25) <= 0.02, stall["duration"]
    daemon.stop()


def test_gauge_shows_the_stall_while_it_lasts(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """A scrape during a 3 s block reads over 2 s; it drops to 0 when the loop is back."""
    daemon = start_daemon(write_config(blocking_worker(3.0, interval=30.0)))
    daemon.wait_ready()
    during = daemon.wait_value("loopwatch_event_loop_stall_seconds", lambda v: v > 2.0, timeout=10)
    assert during < 3.2
    daemon.wait_event("stall")
    assert daemon.value("loopwatch_event_loop_stall_seconds") == 0.0
    stall = daemon.named("stall")[0]
    assert abs(stall["duration"] - 3.0) <= 0.02
    daemon.stop()


def test_repeated_stalls_are_aggregated_without_losing_the_count(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """Many identical stalls: the first logs at once, the rest in a summary with their count."""
    daemon = start_daemon(write_config(blocking_worker(0.15, interval=0.05)))
    daemon.wait_ready()
    counted = daemon.wait_value("loopwatch_event_loop_stalls_total", lambda v: v >= 6, timeout=20)
    assert daemon.stop() == 0
    stalls = daemon.named("stall")
    logged = len(stalls) + sum(e.get("repeats", 0) for e in stalls)
    assert len(stalls) <= 3, stalls
    assert logged >= counted  # every counted stall is in the log, once or in a summary


def test_healthy_loop_reports_no_stall(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """Offloaded work, busy threads and processes: no false stall over several seconds."""
    config = write_config(
        """
[ticker]
interval = 0.25
[[workers]]
name = "io"
target = "daemon.workloads:blocking_io"
kwargs = { seconds = 0.01 }
strategy = "thread"
concurrency = 4
[[workers]]
name = "cpu"
target = "daemon.workloads:countdown"
kwargs = { n = 2_000_000 }
strategy = "process"
concurrency = 2
[[workers]]
name = "coop"
target = "daemon.workloads:countdown"
kwargs = { n = 2_000_000 }
strategy = "cooperative"
"""
    )
    daemon = start_daemon(config)
    daemon.wait_ready()
    scrapes = threading.Event()

    def scrape_often() -> None:
        while not scrapes.is_set():
            daemon.scrape_text()
            time.sleep(0.1)

    scraper = threading.Thread(target=scrape_often)
    scraper.start()
    try:
        daemon.wait_event("tick", lambda e: len(daemon.named("tick")) >= 20, timeout=30)
    finally:
        scrapes.set()
        scraper.join()
    assert daemon.value("loopwatch_event_loop_stalls_total") == 0.0
    assert daemon.stop() == 0
    assert daemon.named("stall") == []


def test_a_stall_cut_short_by_sigterm_is_still_logged(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """SIGTERM during a 2 s block: the daemon exits 0 after it, and the stall is in the log."""
    daemon = start_daemon(write_config(blocking_worker(2.0, interval=30.0)))
    daemon.wait_ready()
    daemon.wait_value("loopwatch_event_loop_stall_seconds", lambda v: v > 0.5, timeout=10)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(20) == 0
    stall = daemon.wait_event("stall")
    assert abs(stall["duration"] - 2.0) <= 0.05
    assert stall["worker"] == "stuck"
    shutdown = daemon.wait_event("shutdown")
    assert daemon.events.index(stall) < daemon.events.index(shutdown)
