"""The ASGI middleware when every request brings its own event loop (a test client each)."""

from __future__ import annotations

import threading

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from loopwatch.asgi import LoopwatchMiddleware
from tests.helpers import library_logs
from tests.waiting import poll


def watchdogs() -> int:
    return sum(t.name == "loopwatch-watchdog" for t in threading.enumerate())


def test_a_test_client_per_request_leaves_no_thread_and_no_false_stall() -> None:
    api = FastAPI()

    @api.get("/ok")
    async def ok() -> dict[str, bool]:
        return {"ok": True}

    app = LoopwatchMiddleware(api, registry=CollectorRegistry(), stall_threshold=0.1)
    before = watchdogs()
    with library_logs() as logs:
        for _ in range(50):
            assert TestClient(app).get("/ok").json() == {"ok": True}  # no lifespan: a loop each
        # The last loop is closed too: its watching ends on its own, with no stall.
        poll(lambda: watchdogs() <= before, timeout=5, what="the watchdog threads to end")
    # No false stall of a closed loop. A real pause of the host (a collection, a loop the
    # host did not run, seen beside CPU hogs) is not this test's; nothing else may show.
    stalls = [e for e in logs if e["event"] == "stall"]
    assert not [e for e in stalls if e["cause"] not in ("gc", "starved")], stalls
    assert app.watcher.stalls == len(stalls)


def test_with_lifespan_the_watching_starts_and_stops_with_the_app() -> None:
    api = FastAPI()

    @api.get("/ok")
    async def ok() -> dict[str, bool]:
        return {"ok": True}

    app = LoopwatchMiddleware(api, registry=CollectorRegistry())
    before = watchdogs()
    for _ in range(3):
        with TestClient(app) as client:
            assert client.get("/ok").status_code == 200
            assert watchdogs() == before + 1
        assert watchdogs() == before
