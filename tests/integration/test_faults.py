"""Fault injection on a real daemon: each fault counted once, logged by worker, daemon goes on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import StartDaemon, WriteConfig
from tests.daemon_process import ROOT

pytestmark = pytest.mark.integration


def process_worker(name: str, target: str, extra: str = "") -> str:
    return f'[[workers]]\nname = "{name}"\ntarget = "tests.targets:{target}"\nstrategy = "process"\n{extra}\n'


OK_WORKER = '[[workers]]\nname = "ok"\ntarget = "daemon.workloads:countdown"\nkwargs = { n = 10_000 }\nstrategy = "process"\ninterval = 0.05\n'


def test_crashing_targets_in_pool_children(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """Segfault and os._exit: ``error`` each, the pool is replaced, other workers go on.

    The pool is shared: a crash also fails the calls other workers had in flight on it
    (BrokenProcessPool); isolate a crashy target on an ``executor`` strategy of its own.
    """
    config = write_config(
        "[executors.process]\nmax_workers = 2\n"
        + process_worker("segv", "segfault")
        + process_worker("exit", "exit_hard")
        + OK_WORKER
    )
    daemon = start_daemon(config)
    daemon.wait_ready()
    for name in ("segv", "exit"):
        daemon.wait_value(
            "loopwatch_tasks_total",
            lambda v: v >= 2,
            worker=name,
            strategy="process",
            outcome="error",
            timeout=30,
        )
    crash = daemon.wait_event("task_failed", lambda e: e["worker"] in ("segv", "exit"))
    assert "BrokenProcessPool" in crash["error"]
    daemon.wait_event("process_pool_replaced")
    ok = daemon.value("loopwatch_tasks_total", worker="ok", strategy="process", outcome="ok") or 0
    daemon.wait_value(
        "loopwatch_tasks_total",
        lambda v: v >= ok + 3,
        worker="ok",
        strategy="process",
        outcome="ok",
        timeout=30,
    )
    assert daemon.stop() == 0


def test_unpicklable_result_is_an_error_of_that_worker_only(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """A result the pool cannot send back fails that call; the pool and other workers are fine."""
    config = write_config(process_worker("pickle", "unpicklable") + OK_WORKER)
    daemon = start_daemon(config)
    daemon.wait_ready()
    daemon.wait_value(
        "loopwatch_tasks_total",
        lambda v: v >= 2,
        worker="pickle",
        strategy="process",
        outcome="error",
    )
    failure = daemon.wait_event("task_failed", lambda e: e["worker"] == "pickle")
    assert "pickle" in failure["error"].lower()
    daemon.wait_value(
        "loopwatch_tasks_total", lambda v: v >= 5, worker="ok", strategy="process", outcome="ok"
    )
    assert (
        daemon.value("loopwatch_tasks_total", worker="ok", strategy="process", outcome="error") == 0
    )
    assert daemon.named("process_pool_replaced") == []
    assert daemon.stop() == 0


def test_a_failing_worker_is_logged_once_per_window_with_its_count(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """Repeated identical failures: one ``task_failed`` line now, a summary with ``repeats`` at the end."""
    config = write_config(
        '[[workers]]\nname = "bad"\ntarget = "tests.targets:fail"\nstrategy = "thread"\n'
    )
    daemon = start_daemon(config)
    daemon.wait_ready()
    failures = daemon.wait_value(
        "loopwatch_tasks_total", lambda v: v >= 5, worker="bad", strategy="thread", outcome="error"
    )
    assert len(daemon.named("task_failed")) == 1
    assert daemon.stop() == 0
    lines = daemon.named("task_failed")
    assert len(lines) == 2
    assert lines[1]["repeats"] >= failures - 1


def test_leaking_children_are_recycled_with_max_tasks_per_child(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """``max_tasks_per_child`` replaces children, so a leaking target cannot grow forever."""
    config = write_config(
        "[executors.process]\nmax_workers = 1\nmax_tasks_per_child = 3\n"
        + process_worker("leaky", "leak", "kwargs = { mb = 20 }")
    )
    daemon = start_daemon(config)
    daemon.wait_ready()
    daemon.wait_value(
        "loopwatch_tasks_total",
        lambda v: v >= 10,
        worker="leaky",
        strategy="process",
        outcome="ok",
        timeout=30,
    )
    assert (
        daemon.value("loopwatch_tasks_total", worker="leaky", strategy="process", outcome="error")
        == 0
    )
    assert daemon.stop() == 0


toml_values = st.one_of(
    st.integers(-5, 70000), st.floats(-1, 1e6, allow_nan=False), st.text(max_size=8),
    st.booleans(), st.sampled_from(["thread", "process", "cooperative", "daemon.workloads:countdown", "x:y"]),
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
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
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
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "check", "-c", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode in (0, 78), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
