"""loopwatch in web services: FastAPI under real uvicorn, and aiohttp's own server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent.parent


SERVERS = {
    "fastapi": ["-m", "uvicorn", "tests.asgi_app:app", "--log-level", "warning", "--port"],
    "aiohttp": ["-m", "aiohttp.web", "-H", "127.0.0.1", "tests.aiohttp_app:make_app", "-P"],
}


class Server:
    def __init__(self, kind: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, *SERVERS[kind], str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        self.lines: list[str] = []
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get("/metrics")
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.1)
            else:
                return

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return str(r.read().decode())

    def value(self, name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(self.get("/metrics")):
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    return float(s.value)
        return 0.0

    def samples(self, name: str) -> dict[tuple[str, str], float]:
        """One scrape: the samples of ``name`` keyed by their single label."""
        return {
            next(iter(s.labels.items())): float(s.value)
            for family in text_string_to_metric_families(self.get("/metrics"))
            for s in family.samples
            if s.name == name and len(s.labels) == 1
        }

    def stalls(self) -> list[dict[str, object]]:
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.lines.extend(line for line in iter(self.proc.stdout.readline, "") if line)
        events = [json.loads(line) for line in self.lines if line.startswith("{")]
        return [e for e in events if e.get("event") == "stall"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(params=sorted(SERVERS))
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    running = Server(request.param)
    yield running
    running.stop()


def wait_for_stalls(server: Server, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 10
    while len(found := server.stalls()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_a_blocking_handler_is_named_by_route_and_line_and_the_fix_removes_it(
    server: Server,
) -> None:
    """The stall names `GET /items/{item_id}` and the handler's line; offloaded: no stall."""
    assert json.loads(server.get("/items/7")) == {"item_id": 7}
    [stall] = wait_for_stalls(server, 1)
    assert stall["request"] == "GET /items/{item_id}"
    assert str(stall["culprit"]).endswith(" read_item")
    assert "_app.py:" in str(stall["culprit"])
    assert stall["cause"] == "wait"
    assert server.value("loopwatch_event_loop_blocked_seconds_total", worker="", cause="wait") > 0.2
    lag = server.samples("loopwatch_event_loop_lag_seconds_bucket")  # one scrape for both
    assert lag[("le", "+Inf")] - lag[("le", "0.25")] >= 1  # the lag histogram shows it too
    for item in range(3):
        assert json.loads(server.get(f"/fixed/{item}")) == {"item_id": item}
    time.sleep(0.3)
    assert len(server.stalls()) == 1  # the fixed route blocks nothing
