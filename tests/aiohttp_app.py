"""An aiohttp service watched by loopwatch, for the aiohttp tests (run under aiohttp.web)."""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import generate_latest

import loopwatch
import loopwatch.aiohttp
from tests.helpers import log_json_lines

log_json_lines()  # the app's own log format: loopwatch's stall lines come in it


async def read_item(request: web.Request) -> web.Response:
    time.sleep(0.3)  # the bug: a blocking call inside an async handler
    return web.json_response({"item_id": int(request.match_info["item_id"])})


async def read_item_fixed(request: web.Request) -> web.Response:
    await loopwatch.run_sync(time.sleep, 0.3)  # the fix: the same call off the loop
    return web.json_response({"item_id": int(request.match_info["item_id"])})


async def metrics(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), content_type="text/plain")


def make_app(argv: list[str] | None = None) -> web.Application:
    app = web.Application()
    app.router.add_get("/items/{item_id}", read_item)
    app.router.add_get("/fixed/{item_id}", read_item_fixed)
    app.router.add_get("/metrics", metrics)
    loopwatch.aiohttp.setup(app, stall_threshold=0.1)
    return app
