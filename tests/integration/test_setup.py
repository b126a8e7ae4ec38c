"""Worker ``setup``: a client made once per thread or process, passed to the target, closed."""

from __future__ import annotations

import contextlib
import http.server
import signal
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import StartDaemon, WriteConfig, tasks_done, wait_tasks, worker_toml

pytestmark = pytest.mark.integration


def events(db: Path) -> list[tuple[str, str, int, int]]:
    # The daemon may still write: wait for its lock as long as its writers would (30 s).
    with contextlib.closing(
        sqlite3.connect(db, timeout=30)
    ) as conn:  # `with conn` alone does not close
        return list(conn.execute("SELECT kind, tag, pid, thread FROM events"))


def owners(
    rows: list[tuple[str, str, int, int]], kind: str, tag: str = "a"
) -> list[tuple[int, int]]:
    return [(pid, thread) for k, t, pid, thread in rows if k == kind and t == tag]


@pytest.mark.parametrize(("strategy", "slots"), [("thread", 3), ("process", 2), ("blocking", 1)])
def test_one_sqlite_connection_per_thread_or_process_closed_by_its_owner(
    tmp_path: Path, write_config: WriteConfig, start_daemon: StartDaemon, strategy: str, slots: int
) -> None:
    """Rows come from several threads (or children) of one connection each; all are closed."""
    db = tmp_path / "rows.db"
    config = write_config(
        f"[executors.thread]\nmax_workers = {slots}\n[executors.process]\nmax_workers = {slots}\n"
        + worker_toml(
            "rows", "tests.targets:write_row", strategy, concurrency=slots,
            setup="tests.targets:open_db", setup_kwargs={"path": str(db), "tag": "a"},
        )
    )  # fmt: skip
    daemon = start_daemon(config)
    daemon.wait_ready()
    wait_tasks(daemon, "rows", strategy, at_least=30)
    assert tasks_done(daemon, "rows", strategy, "error") == 0
    assert daemon.stop() == 0
    rows = events(db)
    opened, closed, writers = owners(rows, "opened"), owners(rows, "closed"), owners(rows, "row")
    assert len(writers) >= 30
    # Several threads (or children) wrote; on the loop, its one thread.
    assert len(set(writers)) == 1 if strategy == "blocking" else len(set(writers)) >= 2
    assert sorted(opened) == sorted(set(opened))  # once per thread or process
    assert set(writers) <= set(opened)
    assert sorted(closed) == sorted(opened)  # each closed, by the thread that opened it


def test_a_replaced_worker_closes_its_connections_in_their_threads(
    tmp_path: Path, write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    db = tmp_path / "rows.db"

    def config(tag: str) -> Path:
        return write_config(
            "[executors.thread]\nmax_workers = 4\n"
            + worker_toml(
                "rows", "tests.targets:write_row", "thread", concurrency=2,
                setup="tests.targets:open_db", setup_kwargs={"path": str(db), "tag": tag},
            )
        )  # fmt: skip

    daemon = start_daemon(config("a"))
    daemon.wait_ready()
    wait_tasks(daemon, "rows", "thread", at_least=10)
    config("b")
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("config_reloaded")
    rows = events(db)
    assert owners(rows, "opened")
    assert sorted(owners(rows, "closed")) == sorted(owners(rows, "opened"))  # at the replacement
    assert daemon.stop() == 0
    rows = events(db)
    assert sorted(owners(rows, "closed", "b")) == sorted(owners(rows, "opened", "b"))


class CountingHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    connections = 0
    requests = 0
    lock = threading.Lock()

    def setup(self) -> None:
        super().setup()
        with self.lock:
            CountingHandler.connections += 1

    def do_GET(self) -> None:
        with self.lock:
            CountingHandler.requests += 1
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CountingHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_an_http_session_per_thread_keeps_its_connection(
    write_config: WriteConfig, start_daemon: StartDaemon, http_server: str
) -> None:
    """Dozens of calls on 2 threads open about 2 connections, not one per call."""
    config = write_config(
        "[executors.thread]\nmax_workers = 2\n"
        + worker_toml(
            "api", "tests.targets:fetch", "thread", concurrency=2, kwargs={"url": http_server},
            setup="tests.targets:http_session",
        )
    )  # fmt: skip
    daemon = start_daemon(config)
    daemon.wait_ready()
    wait_tasks(daemon, "api", "thread", at_least=50)
    assert tasks_done(daemon, "api", "thread", "error") == 0
    assert daemon.stop() == 0
    assert CountingHandler.requests >= 50
    assert CountingHandler.connections <= 2
