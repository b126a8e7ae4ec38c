"""SIGHUP reload on a real daemon: strategy switch, add/remove, invalid files, no lost calls."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.helpers import StartDaemon, WriteConfig, tasks_done, wait_tasks

pytestmark = pytest.mark.integration


def one_worker(
    strategy: str,
    *,
    target: str = "tests.targets:block",
    kwargs: str = "seconds = 0.2",
    name: str = "w",
    extra: str = "",
) -> str:
    return f"""
[[workers]]
name = "{name}"
target = "{target}"
kwargs = {{ {kwargs} }}
strategy = "{strategy}"
interval = 0.1
{extra}
"""


def test_switching_blocking_to_thread_removes_stalls_without_restart(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """blocking -> thread: same pid, stalls stop, worker_info shows only the new strategy."""
    config = write_config(one_worker("blocking"))
    daemon = start_daemon(config)
    daemon.wait_ready()
    daemon.wait_event("stall", lambda e: not e["ongoing"])
    write_config(one_worker("thread"))
    daemon.signal(signal.SIGHUP)
    reloaded = daemon.wait_event("config_reloaded")
    assert reloaded["replaced"] == ["w"]
    stalls_after_switch = daemon.value("loopwatch_event_loop_stalls_total")
    wait_tasks(daemon, "w", "thread", at_least=5)
    assert daemon.value("loopwatch_event_loop_stalls_total") == stalls_after_switch
    text = daemon.scrape_text()
    assert (
        'loopwatch_worker_info{strategy="thread",target="tests.targets:block",worker="w"} 1.0'
        in text
    )
    assert 'strategy="blocking",target' not in text
    assert daemon.value("loopwatch_config_reloads_total", outcome="success") == 1
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0


def test_adding_and_removing_workers(write_config: WriteConfig, start_daemon: StartDaemon) -> None:
    """A new worker starts; a removed one drains and its gauge and info series go."""
    config = write_config(one_worker("thread", name="old", kwargs="seconds = 0.05"))
    daemon = start_daemon(config)
    daemon.wait_ready()
    wait_tasks(daemon, "old", "thread")
    write_config(
        one_worker(
            "process",
            name="new",
            target="loopwatch.daemon.workloads:countdown",
            kwargs="n = 100_000",
        )
    )
    daemon.signal(signal.SIGHUP)
    reloaded = daemon.wait_event("config_reloaded")
    assert (reloaded["added"], reloaded["removed"], reloaded["replaced"]) == (["new"], ["old"], [])
    wait_tasks(daemon, "new", "process", at_least=2)
    text = daemon.scrape_text()
    assert (
        'loopwatch_worker_info{strategy="thread",target="tests.targets:block",worker="old"}'
        not in text
    )
    assert 'loopwatch_tasks_in_flight{worker="old"}' not in text
    assert daemon.stop() == 0


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        ("[[workers]\nname = ", "is not valid TOML"),
        (one_worker("teleport"), "workers[0].strategy"),
        (
            one_worker("thread", target="tests.targets:nothing_here"),
            'workers[0].target: module "tests.targets" has no attribute "nothing_here"',
        ),
    ],
)
def test_an_invalid_file_changes_nothing(
    write_config: WriteConfig, start_daemon: StartDaemon, broken: str, expected: str
) -> None:
    """Syntax, schema or target errors: logged with key paths, counted, nothing changes."""
    config = write_config(one_worker("thread", kwargs="seconds = 0.05"))
    daemon = start_daemon(config)
    daemon.wait_ready()
    config.write_text(broken)
    daemon.signal(signal.SIGHUP)
    failed = daemon.wait_event("config_reload_failed")
    assert any(expected in line for line in [failed["error"], *failed["errors"]]), failed
    assert daemon.value("loopwatch_config_reloads_total", outcome="failure") == 1
    before = tasks_done(daemon, "w", "thread", "ok")
    wait_tasks(daemon, "w", "thread", at_least=before + 3)
    assert daemon.named("config_reloaded") == []
    assert daemon.stop() == 0


def test_reload_while_long_calls_are_in_flight_loses_none(
    tmp_path: Path, write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """Every call started is finished exactly once across a replacing reload and the stop."""
    calls = tmp_path / "calls"
    calls.mkdir()
    kwargs = f'directory = "{calls}", seconds = 0.6'
    config = write_config(
        one_worker("thread", target="tests.targets:record", kwargs=kwargs, extra="concurrency = 3")
    )
    daemon = start_daemon(config)
    daemon.wait_ready()
    daemon.wait_value("loopwatch_tasks_in_flight", lambda v: v == 3, worker="w")
    write_config(
        one_worker("process", target="tests.targets:record", kwargs=kwargs, extra="concurrency = 2")
    )
    daemon.signal(signal.SIGHUP)
    assert daemon.wait_event("config_reloaded")["replaced"] == ["w"]
    wait_tasks(daemon, "w", "process", at_least=2)
    assert daemon.stop() == 0
    starts = {p.stem for p in calls.glob("*.start")}
    dones = {p.stem for p in calls.glob("*.done")}
    assert len(starts) >= 5
    assert starts == dones


def test_sighup_burst_is_coalesced_and_restart_only_keys_are_reported(
    write_config: WriteConfig, start_daemon: StartDaemon, port: int
) -> None:
    """Five quick SIGHUPs: at most two reloads; a port change is reported, the rest applied."""
    config = write_config(one_worker("thread", kwargs="seconds = 0.05"))
    daemon = start_daemon(config)
    daemon.wait_ready()
    config.write_text(
        f'[metrics]\nport = {port + 1}\n[logging]\nformat = "json"\nlevel = "warning"\n'
        + one_worker("thread", kwargs="seconds = 0.01")
    )
    for _ in range(5):
        daemon.signal(signal.SIGHUP)
    reloaded = daemon.wait_event("config_reloaded")
    assert reloaded["restart_required"] == ["metrics"]
    assert daemon.wait_event("config_restart_required")["sections"] == ["metrics"]
    time.sleep(0.5)  # let any coalesced second reload land
    assert 1 <= (daemon.value("loopwatch_config_reloads_total", outcome="success") or 0) <= 2
    ticks_before = len(daemon.named("tick"))
    wait_tasks(daemon, "w", "thread", at_least=10)
    time.sleep(1.2)  # a tick's interval: the new level (warning) hides info ticks
    assert len(daemon.named("tick")) == ticks_before
    assert daemon.stop() == 0
