"""Notifier against a real AF_UNIX datagram socket, path and abstract."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from loopwatch.daemon.systemd import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def test_messages_arrive_as_datagrams(listener: tuple[socket.socket, str]) -> None:
    """READY, STATUS, RELOADING with MONOTONIC_USEC, WATCHDOG, STOPPING."""
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready("lag ok")
    assert sock.recv(4096) == b"READY=1\nSTATUS=lag ok"
    notifier.reloading()
    reloading = sock.recv(4096).decode().split("\n")
    assert reloading[0] == "RELOADING=1"
    assert reloading[1].startswith("MONOTONIC_USEC=")
    assert int(reloading[1].split("=")[1]) > 0
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()


def test_abstract_socket() -> None:
    """``@name`` addresses the abstract namespace."""
    name = f"loopwatch-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready()
        notifier.close()
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_no_socket_no_messages_no_error() -> None:
    """Without $NOTIFY_SOCKET every call is a no-op."""
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.status("x")
    notifier.ready()
    notifier.watchdog()
    notifier.close()


def test_a_vanished_socket_is_logged_not_raised(tmp_path: Path) -> None:
    """systemd gone: the send fails quietly."""
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    with structlog.testing.capture_logs() as logs:
        notifier.ready()
    notifier.close()
    assert [e["event"] for e in logs] == ["sd_notify_failed"]
    assert "FileNotFoundError" in logs[0]["error"] or "ConnectionRefused" in logs[0]["error"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "2000000"}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_watchdog_usec(
    env: dict[str, str], expected: float | None
) -> None:
    """Pings every half $WATCHDOG_USEC, only when meant for this pid."""
    assert Notifier(env).watchdog_interval_s == expected
