"""``setup(app)``: watch the loop under an aiohttp application, and name the request of a stall.

Imports aiohttp, so it is imported only by those who use it. The watcher starts with the
application (``on_startup``) and stops with it (``on_cleanup``); a middleware notes each
request against the task serving it, named by method and route (``GET /items/{item_id}``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from loopwatch.watcher import Watcher

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
WATCHER: web.AppKey[Watcher] = web.AppKey("loopwatch_watcher", Watcher)


class RequestName:
    """A request as a stall names it, worked out only when a stall asks."""

    __slots__ = ("_request",)

    def __init__(self, request: web.Request) -> None:
        self._request = request

    def __str__(self) -> str:
        request = self._request
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else request.path
        return f"{request.method} {route}"


def setup(
    app: web.Application,
    *,
    registry: CollectorRegistry | None = None,
    resolution: float = 0.01,
    stall_threshold: float = 0.1,
    dump_after: float = 10.0,
) -> Watcher:
    """Watch the loop while ``app`` runs; returns the watcher (also ``app[WATCHER]``)."""
    watcher = Watcher(
        registry=registry,
        resolution=resolution,
        stall_threshold=stall_threshold,
        dump_after=dump_after,
    )
    app[WATCHER] = watcher

    async def start(_: web.Application) -> None:
        watcher.start(asyncio.get_running_loop())

    async def stop(_: web.Application) -> None:
        watcher.stop()

    @web.middleware
    async def name_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        task = asyncio.current_task()
        requests = watcher.occupant.requests
        if task is not None:
            requests[task] = RequestName(request)
        try:
            return await handler(request)
        finally:
            if task is not None:
                requests.pop(task, None)

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.middlewares.append(name_request)
    return watcher
