"""aiohttp: `python -m aiohttp.web examples.aiohttp_app:make_app`. GET /items/1 stalls the loop."""

import logging
import time

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

import loopwatch.aiohttp

logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # the app's own format


async def read_item(request: web.Request) -> web.Response:
    time.sleep(0.3)  # the bug; the fix is `await loopwatch.run_sync(time.sleep, 0.3)`
    return web.Response(text=request.match_info["item_id"])


def make_app(argv: list[str]) -> web.Application:
    app = web.Application()
    app.router.add_get("/items/{item_id}", read_item)
    app.router.add_get("/metrics", make_aiohttp_handler())
    loopwatch.aiohttp.setup(app)
    return app
