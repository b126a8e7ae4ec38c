"""Fault injection on a real daemon: each fault counted once, logged by worker, daemon goes on."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopwatch.daemon.cli import run_cli
from tests.helpers import (
    StartDaemon,
    WriteConfig,
    tasks_done,
    wait_tasks,
    worker_toml,
)

pytestmark = pytest.mark.integration


OK_WORKER = worker_toml(
    "ok", "loopwatch.daemon.workloads:countdown", "process", {"n": 10_000}, interval=0.05
)


def test_crashing_targets_in_pool_children(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """Segfault and os._exit: ``error`` each, the pool is replaced, other workers go on.

    The pool is shared: a crash also fails the calls other workers had in flight on it
    (BrokenProcessPool); isolate a crashy target on an ``executor`` strategy of its own.
    """
    config = write_config(
        "[executors.process]\nmax_workers = 2\n"
        + worker_toml("segv", "tests.targets:segfault")
        + worker_toml("exit", "tests.targets:exit_hard")
        + OK_WORKER
    )
    daemon = start_daemon(config)
    daemon.wait_ready()
    for name in ("segv", "exit"):
        wait_tasks(daemon, name, "process", outcome="error", at_least=2, timeout=30)
    crash = daemon.wait_event("task_failed", lambda e: e["worker"] in ("segv", "exit"))
    assert "BrokenProcessPool" in crash["error"]
    daemon.wait_event("process_pool_replaced")
    ok = tasks_done(daemon, "ok", "process", "ok")
    wait_tasks(daemon, "ok", "process", at_least=ok + 3, timeout=30)
    assert daemon.stop() == 0


def test_unpicklable_result_is_an_error_of_that_worker_only(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """A result the pool cannot send back fails that call; the pool and other workers are fine."""
    config = write_config(worker_toml("pickle", "tests.targets:unpicklable") + OK_WORKER)
    daemon = start_daemon(config)
    daemon.wait_ready()
    wait_tasks(daemon, "pickle", "process", outcome="error", at_least=2)
    failure = daemon.wait_event("task_failed", lambda e: e["worker"] == "pickle")
    # 3.13 words it "Can't get local object": the traceback shows where pickling failed.
    assert "pickl" in (failure["error"] + failure["traceback"]).lower()
    wait_tasks(daemon, "ok", "process", at_least=5)
    assert tasks_done(daemon, "ok", "process", "error") == 0
    assert daemon.named("process_pool_replaced") == []
    assert daemon.stop() == 0


def test_a_failing_worker_is_logged_once_per_window_with_its_count(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """Repeated identical failures: one ``task_failed`` line now, with the traceback; a summary with ``repeats`` at the end."""
    config = write_config(
        worker_toml("bad", "tests.targets:fail", "thread")
        + worker_toml("remote", "tests.targets:fail", "process", {"message": "in a child"})
    )
    daemon = start_daemon(config)
    daemon.wait_ready()
    failures = wait_tasks(daemon, "bad", "thread", outcome="error", at_least=5)
    wait_tasks(daemon, "remote", "process", outcome="error", at_least=2)
    assert len([e for e in daemon.named("task_failed") if e["worker"] == "bad"]) == 1
    assert daemon.stop() == 0
    lines = [e for e in daemon.named("task_failed") if e["worker"] == "bad"]
    assert len(lines) == 2
    assert lines[1]["repeats"] >= failures - 1
    assert "tests/targets.py" in lines[0]["traceback"]
    assert lines[0]["traceback"].endswith("RuntimeError: boom")
    assert "traceback" not in lines[1]  # aggregated repeats carry none
    [remote] = [
        e for e in daemon.named("task_failed") if e["worker"] == "remote" and "repeats" not in e
    ]
    assert "raise RuntimeError(message)" in remote["traceback"]  # the child's own traceback


def test_leaking_children_are_recycled_with_max_tasks_per_child(
    write_config: WriteConfig, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """``max_tasks_per_child`` replaces children, so a leaking target cannot grow forever."""
    pids = tmp_path / "pids"
    config = write_config(
        "[executors.process]\nmax_workers = 1\nmax_tasks_per_child = 3\n"
        + worker_toml("leaky", "tests.targets:leak", kwargs={"mb": 20, "marker": str(pids)})
    )
    daemon = start_daemon(config)
    daemon.wait_ready()
    wait_tasks(daemon, "leaky", "process", at_least=10, timeout=30)
    assert tasks_done(daemon, "leaky", "process", "error") == 0
    assert daemon.stop() == 0
    calls = pids.read_text().split()
    assert len(calls) >= 10
    # Each child served at most 3 calls before it was replaced by a new one.
    assert len(set(calls)) >= len(calls) // 3
    assert max(calls.count(pid) for pid in set(calls)) <= 3


toml_values = st.one_of(
    st.integers(-5, 70000), st.floats(-1, 1e6, allow_nan=False), st.text(max_size=8),
    st.booleans(), st.sampled_from(["thread", "process", "cooperative", "loopwatch.daemon.workloads:countdown", "x:y"]),
)  # fmt: skip
sections = st.sampled_from(
    [
        "ticker",
        "probe",
        "metrics",
        "logging",
        "shutdown",
        "executors.thread",
        "executors.process",
        "bogus",
    ]
)
keys = st.sampled_from(
    [
        "interval",
        "resolution",
        "stall_threshold",
        "port",
        "host",
        "level",
        "format",
        "timeout",
        "max_workers",
        "start_method",
        "x",
    ]
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(sections, st.dictionaries(keys, toml_values, max_size=3), max_size=3))
def test_cli_check_on_random_configs_exits_0_or_78_without_traceback(
    tmp_path: Path, doc: dict[str, dict[str, object]]
) -> None:
    """``loopwatch check`` on random documents: exit 0 or 78, never a traceback."""
    lines = []
    for section, values in doc.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                rendered = "true" if value else "false"
            elif isinstance(value, str):
                rendered = '"' + value.encode("unicode_escape").decode().replace('"', '\\"') + '"'
            else:
                rendered = repr(value)
            lines.append(f"{key} = {rendered}")
    path = tmp_path / "random.toml"
    path.write_text("\n".join(lines) + "\n")
    # In this process: an interpreter's start per example was most of the test's 12 s,
    # and an exception here fails it as a traceback there would.
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_cli(["check", "-c", str(path)])
    assert code in (0, 78), err.getvalue()
    assert "Traceback" not in err.getvalue() + out.getvalue()


def test_a_thread_call_that_never_returns_is_a_timeout_when_its_timeout_passes(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """Counted and logged at its timeout; its slot stays held, so in-flight tells the truth."""
    daemon = start_daemon(
        write_config(worker_toml("stuck", "tests.targets:hang", "thread", timeout=0.3))
    )
    daemon.wait_ready()
    wait_tasks(daemon, "stuck", "thread", "timeout", timeout=5)
    failed = daemon.wait_event("task_failed", lambda e: e["worker"] == "stuck")
    assert "TimeoutError" in failed["error"]
    assert daemon.value("loopwatch_tasks_in_flight", worker="stuck") == 1  # still running
    assert tasks_done(daemon, "stuck", "thread", "timeout") == 1  # no second call started
    daemon.kill()


def test_a_process_call_past_its_timeout_does_not_hold_a_pool_slot_for_good(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """Given its timeout once more, then its child is killed: the slot comes back."""
    daemon = start_daemon(
        write_config(
            "[executors.process]\nmax_workers = 1\n"
            + worker_toml("stuck", "tests.targets:hang", "process", timeout=0.3)
        )
    )
    daemon.wait_ready()
    wait_tasks(daemon, "stuck", "process", "timeout", timeout=5)
    replaced = daemon.wait_event("process_pool_replaced", timeout=10)
    assert replaced["reason"] == "a call ran past its timeout twice over"
    # The slot came back: the next call started, and timed out in its turn.
    wait_tasks(daemon, "stuck", "process", "timeout", at_least=2, timeout=10)
    assert daemon.stop() == 0
