"""Shared fixtures: registries, config files, free ports, real daemon subprocesses."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from daemon.metrics import Metrics
from tests.daemon_process import DaemonProcess

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh registry per test."""
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    """Every loopwatch metric on the test's own registry."""
    return Metrics(registry)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def port() -> int:
    """A free port for the endpoint."""
    return free_port()


WriteConfig = Callable[..., Path]


@pytest.fixture
def write_config(tmp_path: Path, port: int) -> WriteConfig:
    """Write a TOML config; ``{port}`` in it becomes the test's free port."""

    def write(text: str, name: str = "loopwatch.toml", *, header: bool = True) -> Path:
        path = tmp_path / name
        prefix = f'[metrics]\nport = {port}\n[logging]\nformat = "json"\n' if header else ""
        path.write_text(prefix + text.replace("{port}", str(port)))
        return path

    return write


StartDaemon = Callable[..., DaemonProcess]


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


def require_tool(name: str) -> str:
    """The tool's path; skips without it, but fails under CI=true (CI must have it)."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is required under CI=true (make test installs it)")
        pytest.skip(f"{name} is not installed")
    return path
