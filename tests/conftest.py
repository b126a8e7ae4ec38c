"""Fixtures only: registries, config files, free ports, real daemon subprocesses."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from loopwatch.daemon.metrics import Metrics
from tests.daemon_process import ROOT, DaemonProcess
from tests.helpers import LagFloor, StartDaemon, WriteConfig, free_port


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration is an integration test: no module can forget."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh registry per test."""
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    """Every loopwatch metric on the test's own registry."""
    return Metrics(registry)


@pytest.fixture
def port() -> int:
    """A free port for the endpoint."""
    return free_port()


@pytest.fixture
def write_config(tmp_path: Path, port: int) -> WriteConfig:
    """Write a TOML config; ``{port}`` in it becomes the test's free port."""

    def write(text: str, name: str = "loopwatch.toml", *, header: bool = True) -> Path:
        path = tmp_path / name
        prefix = f'[metrics]\nport = {port}\n[logging]\nformat = "json"\n' if header else ""
        path.write_text(prefix + text.replace("{port}", str(port)))
        return path

    return write


@pytest.fixture
def start_daemon(port: int) -> Iterator[StartDaemon]:
    """Start real ``loopwatch run`` subprocesses; every one is killed at teardown."""
    started: list[DaemonProcess] = []

    def start(config: Path, env: dict[str, str] | None = None) -> DaemonProcess:
        daemon = DaemonProcess(config, port, env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


@pytest.fixture
def lag_floor() -> Iterator[LagFloor]:
    """This machine's own lag, sampled from before the test's daemon starts to ``p99()``."""
    floor = LagFloor()
    floor.start()
    yield floor
    floor.close()


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel, built from the source tree as a release would be.

    Built once for all test processes: a build writes ``*.egg-info`` into the source tree,
    and two at once (one per xdist worker) break each other.
    """
    shared = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        shared = shared.parent  # this run's, above each worker's own
    out = shared / "dist"
    with (shared / "dist.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "built").exists():
            subprocess.run(
                [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out),
                 str(ROOT)],
                check=True, capture_output=True, timeout=600,
            )  # fmt: skip
            (out / "built").touch()
    return {
        "sdist": next(out.glob("loopwatch-*.tar.gz")),
        "wheel": next(out.glob("loopwatch-*.whl")),
    }
