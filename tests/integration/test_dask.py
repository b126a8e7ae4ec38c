"""The dask strategy against real Dask clusters: embedded, and separate processes by address."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_process import ROOT, histogram_quantile
from tests.helpers import (
    LagFloor,
    StartDaemon,
    WriteConfig,
    free_port,
    tasks_done,
    wait_tasks,
    worker_toml,
)

pytestmark = pytest.mark.integration
LAG = "loopwatch_event_loop_lag_seconds"


def test_embedded_cluster_runs_cpu_work_with_low_lag_and_counts_errors_and_timeouts(
    write_config: WriteConfig, start_daemon: StartDaemon, lag_floor: LagFloor
) -> None:
    """CPU calls complete on an embedded LocalCluster; lag p99 < 25 ms; errors and timeouts counted."""
    config = write_config(
        "[executors.dask]\nn_workers = 2\n"
        + worker_toml(
            "cpu", "loopwatch.daemon.workloads:countdown", "dask", "n = 1_000_000", concurrency=2
        )
        + worker_toml("bad", "tests.targets:fail", "dask", 'message = "dask boom"')
        + worker_toml("slow", "tests.targets:hang", "dask", "seconds = 3", timeout=0.3)
    )
    daemon = start_daemon(config)
    daemon.wait_ready(timeout=60)
    wait_tasks(daemon, "cpu", "dask", at_least=20, timeout=60)
    wait_tasks(daemon, "bad", "dask", outcome="error", at_least=2)
    wait_tasks(daemon, "slow", "dask", outcome="timeout")
    # A timed-out call is cancelled on the cluster and frees its slot at once: held until
    # each 3 s call really ended, three timeouts would take over 6 s.
    first = time.monotonic()
    wait_tasks(daemon, "slow", "dask", outcome="timeout", at_least=4, timeout=20)
    assert time.monotonic() - first < 3.0
    failed = daemon.wait_event("task_failed", lambda e: e["worker"] == "bad")
    assert failed["error"] == "RuntimeError: dask boom"
    p99 = histogram_quantile(daemon.scrape(), LAG, 0.99)
    floor = lag_floor.p99()
    assert p99 <= 0.025 + 2 * floor, f"lag p99 {p99:.4f} s; this machine's own floor {floor:.4f} s"
    assert daemon.stop(30) == 0


class DaskProcesses:
    """A ``dask scheduler`` and a ``dask worker`` started as separate processes on loopback."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.address = f"tcp://127.0.0.1:{port}"
        self.env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None

    def _dask(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "dask"), *args],
            env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip

    def start_scheduler(self) -> None:
        self.scheduler = self._dask(
            "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"
        )

    def start_worker(self) -> None:
        self.worker = self._dask(
            "worker", self.address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
            "--host", "127.0.0.1",
        )  # fmt: skip

    def kill(self) -> None:
        """SIGKILL both (a Dask worker shuts itself down once its scheduler is gone anyway)."""
        self.close()

    def close(self) -> None:
        for proc in (self.worker, self.scheduler):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def dask_processes() -> Iterator[DaskProcesses]:
    procs = DaskProcesses(free_port())
    yield procs
    procs.close()


def test_scheduler_by_address_killed_and_restarted_mid_run(
    dask_processes: DaskProcesses, write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """Calls go to a separate scheduler; while the pair is gone they fail as errors; then resume."""
    dask_processes.start_scheduler()
    dask_processes.start_worker()
    config = write_config(
        f'[executors.dask]\naddress = "{dask_processes.address}"\n'
        + worker_toml(
            "remote",
            "loopwatch.daemon.workloads:countdown",
            "dask",
            "n = 100_000",
            interval=0.05,
            timeout=5.0,
        )
    )
    daemon = start_daemon(config)
    daemon.wait_ready(timeout=60)
    wait_tasks(daemon, "remote", "dask", at_least=5, timeout=60)
    dask_processes.kill()
    wait_tasks(daemon, "remote", "dask", outcome="error", timeout=30)
    failed = daemon.wait_event(
        "task_failed", lambda e: e["worker"] == "remote" and "unavailable" in e["error"], timeout=30
    )
    assert dask_processes.address in failed["error"]
    ok_before = tasks_done(daemon, "remote", "dask", "ok")
    # The loop never waits on the cluster. (Beside a second test process and the
    # cluster's start, the host may not run it for a moment: a starved stall is not one.)
    waited = sum(
        value
        for (name, labels), value in daemon.scrape().items()
        if name == "loopwatch_event_loop_blocked_seconds_total" and ("cause", "wait") in labels
    )
    assert waited == 0, [e for e in daemon.named("stall") if not e["ongoing"]]
    dask_processes.start_scheduler()
    dask_processes.start_worker()
    wait_tasks(daemon, "remote", "dask", at_least=ok_before + 5, timeout=90)
    assert daemon.stop(30) == 0
