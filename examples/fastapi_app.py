"""FastAPI: `uvicorn examples.fastapi_app:app`. GET /items/1 stalls the loop; /fixed/1 does not."""

import logging
import time

from fastapi import FastAPI
from prometheus_client import make_asgi_app

import loopwatch.asgi

logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # the app's own format
api = FastAPI()
api.mount("/metrics", make_asgi_app())  # serving metrics stays the app's choice


@api.get("/items/{item_id}")
async def read_item(item_id: int) -> None:
    time.sleep(0.3)  # the bug: a blocking call on the loop; the `stall` names this line


@api.get("/fixed/{item_id}")
async def read_fixed(item_id: int) -> None:
    await loopwatch.run_sync(time.sleep, 0.3)  # the fix: the same call, off the loop


app = loopwatch.asgi.LoopwatchMiddleware(api)
