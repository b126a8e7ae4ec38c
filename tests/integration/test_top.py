"""``loopwatch top`` against a real daemon: one snapshot, and live in a real terminal (tmux)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_process import ROOT
from tests.helpers import (
    StartDaemon,
    WriteConfig,
    free_port,
    require_tool,
    run_loopwatch,
    worker_toml,
)
from tests.waiting import poll

pytestmark = pytest.mark.integration

WORKERS = worker_toml(
    "io", "loopwatch.daemon.workloads:blocking_io", "thread", "seconds = 0.02"
) + worker_toml(
    "stuck", "loopwatch.daemon.workloads:blocking_io", "blocking", "seconds = 0.3", interval=0.5
)
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}


def top(*args: str) -> subprocess.CompletedProcess[str]:
    return run_loopwatch("top", *args, env=ENV)


def test_once_prints_the_loop_the_last_stalls_workers_and_pools(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    config = write_config(WORKERS)
    daemon = start_daemon(config)
    daemon.wait_ready()
    daemon.wait_event("stall")
    result = top("-c", str(config), "--once", "--interval", "0.5")
    assert result.returncode == 0, result.stderr
    screen = result.stdout
    assert "loop lag" in screen
    assert "p99" in screen
    assert "utilization" in screen
    assert "daemon/workloads.py:35 blocking_io" in screen  # the culprit of the last stalls
    assert " wait " in screen
    lines = {line.split()[0]: line.split() for line in screen.splitlines() if line.split()}
    assert lines["io"][1] == "thread"
    assert float(lines["io"][2]) > 5  # calls/s of a 20 ms call
    assert lines["stuck"][1] == "blocking"
    assert lines["thread"][1] in ("0", "1")  # the pool: io's one slot, between calls or in one
    assert lines["thread"][2] == "4"
    daemon.stop()


def test_piped_live_view_streams_a_frame_per_refresh(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """``loopwatch top | tee log``: each refresh is printed as it comes, not all at exit."""
    config = write_config(WORKERS)
    daemon = start_daemon(config)
    daemon.wait_ready()
    viewer = subprocess.Popen(
        [sys.executable, "-m", "loopwatch.daemon", "top", "-c", str(config), "--interval", "0.3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        text=True, cwd=ROOT, env=ENV,
    )  # fmt: skip
    try:
        assert viewer.stdout is not None
        frames = 0
        for line in viewer.stdout:  # blocks until the viewer writes: no frame, no pass
            frames += "loop lag" in line
            if frames == 2:
                break
        assert frames == 2
        assert viewer.poll() is None  # still running: the frames came while it ran
    finally:
        viewer.terminate()
        viewer.communicate(timeout=10)  # and closes its pipes
        daemon.stop()


def test_once_reads_any_url_and_an_unreachable_one_exits_69() -> None:
    url = f"http://127.0.0.1:{free_port()}/metrics"
    result = top("--url", url, "--once")
    assert result.returncode == 69
    assert result.stderr.startswith(f"loopwatch top: cannot read {url}: ")
    assert "Connection refused" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def tmux() -> Iterator[tuple[str, str]]:
    tool = require_tool("tmux")
    session = f"lwtop-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [tool, "new-session", "-d", "-s", session, "-x", "120", "-y", "50", "-c", str(ROOT)],
        check=True, env=ENV,
    )  # fmt: skip
    yield tool, session
    subprocess.run([tool, "kill-session", "-t", session], check=False)


def pane(tool: str, session: str) -> str:
    out = subprocess.run(
        [tool, "capture-pane", "-p", "-t", session], capture_output=True, text=True, check=True
    )
    return out.stdout


def wait_pane(tool: str, session: str, text: str, timeout: float = 20.0) -> str:
    def showing() -> str:
        screen = pane(tool, session)
        return screen if text in screen else ""

    return poll(
        showing,
        timeout=timeout,
        interval=0.1,
        what=f"{text!r} on the screen",
    )


def test_live_view_follows_a_stall_in_a_real_terminal(
    tmp_path: Path,
    write_config: WriteConfig,
    start_daemon: StartDaemon,
    tmux: tuple[str, str],
) -> None:
    """A stall in progress shows while it lasts, then in the last stalls; Ctrl-C exits 0."""
    tool, session = tmux
    config = write_config(
        worker_toml("io", "loopwatch.daemon.workloads:blocking_io", "thread", "seconds = 0.02")
        + worker_toml(
            "slow",
            "loopwatch.daemon.workloads:blocking_io",
            "blocking",
            "seconds = 2.0",
            interval=3.0,
        )
    )
    daemon = start_daemon(config)
    daemon.wait_ready()
    command = f"PYTHONPATH={ROOT} {sys.executable} -m loopwatch.daemon top -c {config} --interval 0.2; echo TOP-EXIT=$?"
    subprocess.run([tool, "send-keys", "-t", session, command, "Enter"], check=True)
    wait_pane(tool, session, "workers")
    wait_pane(tool, session, "STALL IN PROGRESS")  # the 2 s block, while it lasts
    screen = wait_pane(tool, session, "workloads.py:35", timeout=10)  # then among the last stalls
    assert "slow" in screen
    subprocess.run([tool, "send-keys", "-t", session, "C-c"], check=True)
    wait_pane(tool, session, "TOP-EXIT=0", timeout=10)
    daemon.stop()


def test_q_quits_the_live_view_and_gives_the_terminal_back(
    write_config: WriteConfig, start_daemon: StartDaemon, tmux: tuple[str, str]
) -> None:
    tool, session = tmux
    config = write_config(worker_toml("io", "loopwatch.daemon.workloads:blocking_io", "thread"))
    daemon = start_daemon(config)
    daemon.wait_ready()
    command = f"PYTHONPATH={ROOT} {sys.executable} -m loopwatch.daemon top -c {config} --interval 0.2; echo TOP-EXIT=$?"
    subprocess.run([tool, "send-keys", "-t", session, command, "Enter"], check=True)
    wait_pane(tool, session, "workers")
    subprocess.run([tool, "send-keys", "-t", session, "q"], check=True)
    wait_pane(tool, session, "TOP-EXIT=0", timeout=10)
    # The terminal is back in its normal mode: typed text echoes again.
    subprocess.run([tool, "send-keys", "-t", session, "echo typed-$((6*7))", "Enter"], check=True)
    wait_pane(tool, session, "typed-42", timeout=10)
    daemon.stop()
