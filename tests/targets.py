"""Targets for test configs: blocking, flaky, hanging and crashing functions.

The daemon under test imports them as ``tests.targets:<name>`` (the tests run it with
the project root on ``PYTHONPATH``), in pool children too.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Generator
from pathlib import Path


def block(seconds: float = 0.5) -> float:
    """Hold the calling thread: on the loop this is a stall of ``seconds``."""
    time.sleep(seconds)
    return seconds


def spin(seconds: float = 0.2) -> int:
    """Hold the CPU (and the GIL) for ``seconds``."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def fail(message: str = "boom") -> None:
    """Raise every time."""
    raise RuntimeError(message)


def flaky(every: int = 2, marker: str = "") -> int:
    """Raise on every ``every``-th call of this process (counted in a file if ``marker``)."""
    path = Path(marker) if marker else None
    count = int(path.read_text()) + 1 if path and path.exists() else 1
    if path:
        path.write_text(str(count))
    if count % every == 0:
        raise ValueError(f"flaky call {count}")
    return count


def hang(seconds: float = 3600.0) -> None:
    """Sleep far past any sensible timeout."""
    time.sleep(seconds)


def die() -> None:
    """Kill the process running the call (a pool child) with SIGKILL."""
    os.kill(os.getpid(), signal.SIGKILL)


def record(directory: str, seconds: float = 0.5) -> None:
    """Write a start file and, ``seconds`` later, a done file: counts calls across reloads."""
    token = f"{os.getpid()}-{time.monotonic_ns()}"
    Path(directory, f"{token}.start").touch()
    time.sleep(seconds)
    Path(directory, f"{token}.done").touch()


def spin_gen(seconds: float = 0.2) -> Generator[None, None, int]:
    """CPU work with safe points: fine on ``cooperative``, a stall on ``blocking``."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        for _ in range(1000):
            n += 1
        yield
    return n


async def async_target() -> None:
    """An ``async def``: a config error on any executor strategy."""


def pid() -> int:
    """The pid of the process that ran the call."""
    return os.getpid()


_calls: dict[str, int] = {}


def block_nth(seconds: float = 1.0, n: int = 2) -> int:
    """Block only on the ``n``-th call in this process (lets the daemon settle first)."""
    _calls["block_nth"] = _calls.get("block_nth", 0) + 1
    if _calls["block_nth"] == n:
        time.sleep(seconds)
    return _calls["block_nth"]


def segfault() -> None:
    """Crash the process running the call with SIGSEGV."""
    import ctypes

    ctypes.string_at(0)


def exit_hard(code: int = 3) -> None:
    """Leave the process running the call without any cleanup."""
    os._exit(code)


def unpicklable() -> object:
    """Return something a process pool cannot send back."""
    return lambda: None


_leaked: list[bytes] = []


def leak(mb: int = 5, marker: str = "") -> int:
    """Keep ``mb`` more MB alive in this process on every call; return (and note) the pid."""
    _leaked.append(b"x" * (mb * 1024 * 1024))
    if marker:
        with Path(marker).open("a") as f:
            f.write(f"{os.getpid()}\n")
    return os.getpid()


def native_sum(n: int = 30_000_000) -> int:
    """One C call that holds the GIL throughout (~0.4 s for 3e7 here)."""
    return sum(range(n))


def gc_heavy(pairs: int = 600_000) -> int:
    """Make ``pairs`` reference cycles, then collect them all in one full collection."""
    import gc

    gc.disable()
    try:
        for _ in range(pairs):
            a: list[object] = []
            b: list[object] = [a]
            a.append(b)
        return gc.collect()
    finally:
        gc.enable()


def wait_in_library(seconds: float = 0.3) -> int:
    """Block inside the standard library: the user's line is this one, not subprocess.py."""
    import subprocess

    return subprocess.run(["sleep", str(seconds)], check=True).returncode


# A module-level lambda: importable by name, but pickle refuses it ("<lambda>").
unpicklable_lambda = lambda n=1: n  # noqa: E731


class RowWriter:
    """A sqlite3 connection of one thread (check_same_thread on), noting when it opens and closes.

    ``close()`` writes through the connection: called from any other thread than the one
    that opened it, sqlite3 raises and no "closed" row is written.
    """

    def __init__(self, path: str, tag: str = "") -> None:
        import sqlite3

        self.tag = tag
        self.conn = sqlite3.connect(path, timeout=30, check_same_thread=True)
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS events (kind TEXT, tag TEXT, pid INT, thread INT)"
        )
        self.note("opened")

    def note(self, kind: str) -> None:
        import os
        import threading

        self.conn.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?)",
            (kind, self.tag, os.getpid(), threading.get_ident()),
        )
        self.conn.commit()

    def close(self) -> None:
        self.note("closed")
        self.conn.close()


def open_db(path: str, tag: str = "") -> RowWriter:
    """The ``setup`` of the sqlite3 tests."""
    return RowWriter(path, tag)


def write_row(db: RowWriter) -> None:
    """A target that writes through the connection its thread's setup made."""
    db.note("row")


def http_session() -> object:
    """The ``setup`` of the HTTP test: one requests.Session (keep-alive) per thread."""
    import requests

    return requests.Session()


def fetch(session: object, url: str) -> int:
    """GET ``url`` through the thread's session."""
    import requests

    assert isinstance(session, requests.Session)
    return session.get(url, timeout=10).status_code


class StuckClient:
    """A client whose ``close()`` never returns (a driver waiting on a dead server)."""

    def close(self) -> None:
        import threading

        threading.Event().wait()


def stuck_client(tag: str = "") -> StuckClient:
    """The ``setup`` of the hung-close tests; ``tag`` tells generations apart."""
    return StuckClient()


def use_client(client: object) -> None:
    """A target that only needs its thread's client to exist."""
    assert client is not None


_BUFFERS: dict[int, bytes] = {}


def hash_buffer(mb: int = 24) -> str:
    """SHA-256 of ``mb`` MB made once per process: native code that lets go of the GIL."""
    data = _BUFFERS.get(mb)
    if data is None:
        data = _BUFFERS[mb] = bytes(mb * 1_000_000)
    return hashlib.sha256(data).hexdigest()


def count(n: int = 2_000_000) -> int:
    """Pure-Python CPU work: it holds the GIL, handing it over every switch interval."""
    while n:
        n -= 1
    return n


def phases(since: float, io_for: float, period: float = 0.0, seconds: float = 0.05) -> str:
    """I/O (a sleep) for ``io_for`` seconds after the epoch time ``since``, CPU after that.

    With ``period``, the two alternate every ``period`` seconds from ``since`` on instead.
    Each call is ``seconds`` long.
    """
    elapsed = time.time() - since
    io = int(elapsed / period) % 2 == 0 if period else elapsed < io_for
    if io:
        time.sleep(seconds)
        return "io"
    count(int(seconds * 20_000_000))
    return "cpu"


def hold_gil_for(seconds: float = 4.0) -> float:
    """One C call that keeps the GIL for ``seconds`` (libc's usleep through a PyDLL)."""
    ctypes.PyDLL(None).usleep(int(seconds * 1_000_000))
    return seconds


def parse_json(path: str) -> int:
    """``json.loads`` of a file's document: one long C call that keeps the GIL."""
    return len(json.loads(Path(path).read_bytes())["records"])


def count_logged(path: str, n: int = 2_000_000, give: object = None, lock: bool = False) -> object:
    """``count``, one line appended to ``path`` per run (any process); a lock back if asked.

    ``give`` is only carried (an argument a process may not take); ``lock`` returns a
    ``threading.Lock``, a result no process can send back.
    """
    with Path(path).open("a", encoding="utf-8") as log:
        log.write(f"{os.getpid()}\n")
    total = count(n)
    return threading.Lock() if lock else total


def idle_threads(n: int = 150) -> list[threading.Thread]:
    """``n`` threads that wait for good: more than faulthandler dumps (100 threads)."""
    never = threading.Event()
    threads = [threading.Thread(target=never.wait, daemon=True) for _ in range(n)]
    for thread in threads:
        thread.start()
    return threads


def native_sum_beside(threads: object, n: int = 30_000_000) -> int:
    """``native_sum``, as a target whose ``setup`` started many threads."""
    return native_sum(n)
