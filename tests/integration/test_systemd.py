"""sd_notify with a real AF_UNIX socket standing in for systemd."""

from __future__ import annotations

import itertools
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_process import children_running
from tests.helpers import StartDaemon, WriteConfig, no_process_left, worker_toml
from tests.waiting import poll

pytestmark = pytest.mark.integration


class FakeSystemd:
    """Receives notify datagrams on a thread, timestamped on arrival, like systemd would."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.received: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.received.append((time.monotonic(), data))

    def messages(self) -> list[str]:
        return [m for _, m in list(self.received)]

    def wait_for(self, field: str, timeout: float = 20.0) -> str:
        """The first datagram (past or new) with a line starting with ``field``."""

        def first() -> str | None:
            for message in self.messages():
                if any(line.startswith(field) for line in message.split("\n")):
                    return message
            return None

        found = poll(first, timeout=timeout, interval=0.02, what=f"a {field} datagram")
        assert found is not None
        return found

    def count(self, field: str) -> int:
        return sum(field in m for m in self.messages())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify.sock")
    yield fake
    fake.close()


def test_ready_status_watchdog_reload_and_stopping(
    systemd: FakeSystemd, write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """READY after the endpoint is bound, WATCHDOG pings, RELOADING/READY around SIGHUP, STOPPING."""
    config = write_config(
        '[[workers]]\nname = "io"\ntarget = "loopwatch.daemon.workloads:blocking_io"\nkwargs = { seconds = 0.05 }\n'
    )
    daemon = start_daemon(config, env={"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "400000"})
    ready = systemd.wait_for("READY=1")
    assert "STATUS=loop lag p99" in ready
    assert "1 workers" in ready
    assert daemon.scrape_text()  # READY=1 promised a bound endpoint
    first = systemd.wait_for("WATCHDOG=1")
    assert first
    pings_before = systemd.count("WATCHDOG=1")
    time.sleep(1.0)
    pings = systemd.count("WATCHDOG=1") - pings_before
    assert 3 <= pings <= 8  # every half WATCHDOG_USEC (0.2 s)
    daemon.signal(signal.SIGHUP)
    reloading = systemd.wait_for("RELOADING=1")
    assert "MONOTONIC_USEC=" in reloading
    daemon.wait_event("config_reloaded")
    poll(lambda: systemd.count("READY=1") >= 2, interval=0.02, what="READY=1 after the reload")
    assert daemon.stop() == 0
    systemd.wait_for("STOPPING=1")


def test_a_stuck_loop_stops_the_watchdog_pings(
    systemd: FakeSystemd, write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """Pings come from the event loop: while it is blocked for 1.5 s, none are sent."""
    config = write_config(
        '[[workers]]\nname = "stuck"\ntarget = "tests.targets:block_nth"\nkwargs = { seconds = 1.5 }\n'
        'strategy = "blocking"\ninterval = 0.5\n'
    )
    daemon = start_daemon(config, env={"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "200000"})
    daemon.wait_event("stall", lambda e: not e["ongoing"] and e["duration"] >= 1.0)
    time.sleep(0.3)
    times = [t for t, m in systemd.received if "WATCHDOG=1" in m]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) >= 1.2
    assert daemon.stop() == 0


@pytest.mark.parametrize("strategy", ["process", "dask"])
def test_sigterm_during_start_up_exits_0_with_no_child_and_no_ready(
    systemd: FakeSystemd, write_config: WriteConfig, start_daemon: StartDaemon, strategy: str
) -> None:
    """SIGTERM while a pool warms up or Dask connects: exit 0, nothing left, no READY."""
    config = write_config(
        '[executors.process]\nstart_method = "spawn"\nmax_workers = 2\n'
        + worker_toml("w", "loopwatch.daemon.workloads:countdown", strategy, {"n": 1000})
    )
    daemon = start_daemon(config, env={"NOTIFY_SOCKET": systemd.path})
    # The pool or the cluster is starting: its first children exist, READY is not sent.
    # Its own: the dump reader (and a fork about to exec it) come first, before the pool.
    poll(
        lambda: children_running(daemon.pid, b"multiprocessing"),
        timeout=20,
        interval=0.005,
        what="a pool child",
    )
    assert not daemon.named("startup")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(30) == 0
    no_process_left(daemon)
    messages = systemd.messages()
    assert any("STOPPING=1" in m for m in messages)
    assert not any("READY=1" in m for m in messages), messages
    assert not daemon.named("startup")


def test_sighup_during_the_shutdown_drain_does_not_kill_the_daemon(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """SIGTERM, then SIGHUP while calls drain: still a clean exit 0 after the drain."""
    daemon = start_daemon(
        write_config(worker_toml("slow", "tests.targets:block", "thread", {"seconds": 1.5}))
    )
    daemon.wait_ready()
    daemon.wait_value("loopwatch_tasks_in_flight", lambda v: v >= 1, worker="slow")
    daemon.signal(signal.SIGTERM)
    time.sleep(0.3)  # inside the drain (the call has over a second to go)
    daemon.signal(signal.SIGHUP)
    assert daemon.wait_exit(20) == 0
    assert daemon.named("shutdown")
