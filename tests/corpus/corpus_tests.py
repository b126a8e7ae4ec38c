"""The blocking-detector corpus: run under ``pytest --loopwatch`` by tests/test_pytest_plugin.py.

Every test named ``test_blocks_*`` blocks the event loop on the line marked ``# BLOCKS``;
every ``test_fine_*`` does not. Slow cases take about 0.3 s, fast ones well under a
millisecond: a time threshold alone cannot see those.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import hashlib
import http.server
import json
import logging
import re
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import vendor_client

SLOW_S = 0.3
PROCESSES = concurrent.futures.ProcessPoolExecutor(1)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(SLOW_S)
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def small_file(tmp_path: Path) -> Path:
    path = tmp_path / "small.txt"
    path.write_text("hello")
    return path


@pytest.fixture
def large_file(tmp_path: Path) -> Path:
    path = tmp_path / "large.bin"
    path.write_bytes(b"x" * 50_000_000)
    return path


def document() -> str:
    # 30 MB: 1.5 s to parse here, past the 0.5 s native dump on a machine 2x faster.
    return (
        "["
        + ",".join(['{"k": 123456, "v": [123456, 123456, 123456, 123456, 123456]}'] * 500_000)
        + "]"
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "corpus.db"


# --- blocking ---------------------------------------------------------------------------


async def test_blocks_slow_http_through_requests(server: str) -> None:
    requests.get(server + "/slow", timeout=5)  # BLOCKS


async def test_blocks_fast_http_through_requests(server: str) -> None:
    requests.get(server + "/fast", timeout=5)  # BLOCKS


async def test_blocks_small_file_read(small_file: Path) -> None:
    small_file.read_text()  # BLOCKS


async def test_blocks_large_file_read(large_file: Path) -> None:
    with large_file.open("rb") as f:  # BLOCKS
        f.read()


async def test_blocks_fast_sqlite_query(db: Path) -> None:
    conn = sqlite3.connect(db)  # BLOCKS
    conn.execute("SELECT 1").fetchall()
    conn.close()


async def test_blocks_slow_sqlite_query(db: Path) -> None:
    conn = await asyncio.to_thread(sqlite3.connect, db, check_same_thread=False)
    conn.execute(  # BLOCKS
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000000) "
        "SELECT count(*) FROM n"
    ).fetchall()
    await asyncio.to_thread(conn.close)


async def test_blocks_subprocess() -> None:
    subprocess.run(["true"], check=True)  # BLOCKS


async def test_blocks_dns() -> None:
    socket.getaddrinfo("localhost", 80)  # BLOCKS


async def test_blocks_time_sleep() -> None:
    time.sleep(0.001)  # BLOCKS


async def test_blocks_pure_python_cpu() -> None:
    total = 0
    for i in range(6_000_000):
        total += i * i  # BLOCKS


async def test_blocks_large_json_loads() -> None:
    # Built in a process: in a thread its own GIL holding would stall the loop first.
    text = await asyncio.get_running_loop().run_in_executor(PROCESSES, document)
    json.loads(text)  # BLOCKS: ~1.5 s in C, holding the GIL: named from faulthandler's dump


async def test_blocks_pathological_regex() -> None:
    re.match(r"(a+)+$", "a" * 25 + "b")  # BLOCKS: ~2 s in C, holding the GIL


async def test_blocks_hashing_a_large_buffer() -> None:
    data = await asyncio.to_thread(bytes, 300_000_000)
    hashlib.sha256(data).hexdigest()  # BLOCKS


async def test_blocks_contended_lock() -> None:
    lock = threading.Lock()
    held = threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            time.sleep(SLOW_S)

    threading.Thread(target=hold).start()
    await asyncio.to_thread(held.wait)
    with lock:  # BLOCKS
        pass


async def test_blocks_gc_of_many_cycles() -> None:
    def build() -> None:
        for _ in range(600_000):
            a: list[object] = []
            a.append([a])

    gc.disable()  # the cycles pile up off the loop, for one collection on it
    try:
        await asyncio.to_thread(build)
        gc.collect()  # BLOCKS
    finally:
        gc.enable()


async def test_blocks_two_calls_deep_in_a_client(server: str) -> None:
    vendor_client.fetch_status(server + "/fast")  # BLOCKS


async def test_blocks_in_a_call_soon_callback() -> None:
    def callback() -> None:
        time.sleep(SLOW_S)  # BLOCKS

    asyncio.get_running_loop().call_soon(callback)
    await asyncio.sleep(SLOW_S + 0.1)


async def test_blocks_in_a_gather_child() -> None:
    async def child() -> None:
        await asyncio.sleep(0)
        Path(__file__).read_bytes()  # BLOCKS

    await asyncio.gather(child(), asyncio.sleep(0.01))


# --- legitimate -------------------------------------------------------------------------


async def test_fine_asyncio_sleep() -> None:
    await asyncio.sleep(0.05)


async def test_fine_to_thread_of_blocking_io(server: str) -> None:
    await asyncio.to_thread(requests.get, server + "/slow", timeout=5)


async def test_fine_run_in_executor_of_cpu_work() -> None:
    def crunch() -> int:
        return sum(i * i for i in range(2_000_000))

    await asyncio.get_running_loop().run_in_executor(None, crunch)


async def test_fine_logging() -> None:
    logging.getLogger("corpus").warning("a log line from an async test")


async def test_fine_path_arithmetic(tmp_path: Path) -> None:
    path = Path("/srv") / "app" / "data.json"
    assert path.with_suffix(".txt").name == "data.txt"
    assert (tmp_path / "x").parent == tmp_path


async def test_fine_a_tight_loop_of_monotonic() -> None:
    end = time.monotonic() + 0.01
    while time.monotonic() < end:
        pass


async def test_fine_asyncio_subprocess() -> None:
    proc = await asyncio.create_subprocess_exec("true")
    await proc.wait()


async def test_fine_asyncio_connection(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /fast HTTP/1.0\r\n\r\n")
    await reader.read()
    writer.close()
    await writer.wait_closed()


async def test_fine_asyncio_dns() -> None:
    await asyncio.get_running_loop().getaddrinfo("localhost", 80)


async def test_fine_gather_of_sleeps() -> None:
    await asyncio.gather(*(asyncio.sleep(0.01) for _ in range(10)))


@pytest.mark.loopwatch_allow("time.sleep")
async def test_fine_an_allowed_call() -> None:
    time.sleep(0.001)


def test_fine_a_sync_test_is_never_watched(small_file: Path) -> None:
    small_file.read_text()
    time.sleep(0.01)
