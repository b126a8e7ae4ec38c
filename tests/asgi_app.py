"""A FastAPI service watched by loopwatch, for the ASGI tests (run under real uvicorn)."""

from __future__ import annotations

import time

from fastapi import FastAPI
from prometheus_client import make_asgi_app

import loopwatch
from loopwatch.asgi import LoopwatchMiddleware
from tests.helpers import log_json_lines

log_json_lines()  # the app's own log format: loopwatch's stall lines come in it

api = FastAPI()
api.mount("/metrics", make_asgi_app())


@api.get("/items/{item_id}")
async def read_item(item_id: int) -> dict[str, int]:
    time.sleep(0.3)  # the bug: a blocking call inside an async handler
    return {"item_id": item_id}


@api.get("/fixed/{item_id}")
async def read_item_fixed(item_id: int) -> dict[str, int]:
    await loopwatch.run_sync(time.sleep, 0.3)  # the fix: the same call off the loop
    return {"item_id": item_id}


@api.get("/spin")
async def spin(seconds: float = 1.0) -> dict[str, float]:
    end = time.perf_counter() + seconds  # CPU work on the loop, for utilization
    while time.perf_counter() < end:
        pass
    return {"seconds": seconds}


app = LoopwatchMiddleware(api, stall_threshold=0.1)
