"""Notifier: sd_notify(3) in pure Python; silently a no-op without ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("loopwatch.systemd")


class Notifier:
    """Sends READY/RELOADING/STOPPING/STATUS/WATCHDOG datagrams to systemd's socket."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        # "@name" is an abstract socket: the kernel spells that with a leading NUL.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.watchdog_interval_s = _watchdog_interval(environ)

    @property
    def enabled(self) -> bool:
        """True when systemd (or a test) listens."""
        return self._socket is not None

    def notify(self, *fields: str) -> None:
        """Send ``fields`` as one datagram; failures are logged, never raised."""
        if self._socket is None:
            return
        try:
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify_failed", error=repr(exc))

    def ready(self, status: str = "") -> None:
        """Tell systemd the daemon is ready (READY=1), with a status line."""
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        """Tell systemd a reload started (RELOADING=1 with MONOTONIC_USEC)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        """Tell systemd the daemon is stopping (STOPPING=1)."""
        self.notify("STOPPING=1")

    def status(self, text: str) -> None:
        """Set the status line systemd shows (STATUS=)."""
        self.notify(f"STATUS={text}")

    def watchdog(self) -> None:
        """Ping systemd's watchdog (WATCHDOG=1)."""
        self.notify("WATCHDOG=1")

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, when the watchdog is meant for this process."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2
