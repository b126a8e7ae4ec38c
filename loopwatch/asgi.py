"""LoopwatchMiddleware: watch the loop under any ASGI app, and name the request of a stall.

No framework is imported: the middleware speaks plain ASGI. It starts watching on the
app's first call (the lifespan startup, or the first request when the server runs
without lifespan) and stops at lifespan shutdown. Each HTTP or WebSocket request is
noted against the task that serves it; a stall while that task holds the loop names it
as ``request``: the method and the route template (``GET /items/{item_id}``) once the
framework routed it (Starlette and FastAPI put the route in the scope), else the path.
Serving ``/metrics`` stays the app's choice: mount ``prometheus_client.make_asgi_app()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry

from loopwatch.watcher import Watcher

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestName:
    """A request as a stall names it, worked out only when a stall asks (off the hot path)."""

    __slots__ = ("_scope",)

    def __init__(self, scope: Scope) -> None:
        self._scope = scope

    def __str__(self) -> str:
        scope = self._scope
        route = getattr(scope.get("route"), "path", None) or scope.get("path", "?")
        method = scope.get("method", scope.get("type", "").upper())
        return f"{method} {route}"


class LoopwatchMiddleware:
    """Wraps an ASGI app: the loop is watched while it serves (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: CollectorRegistry | None = None,
        resolution: float = 0.01,
        stall_threshold: float = 0.1,
        dump_after: float = 10.0,
    ) -> None:
        self.app = app
        self.watcher = Watcher(
            registry=registry,
            resolution=resolution,
            stall_threshold=stall_threshold,
            dump_after=dump_after,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self.watcher.occupant.request_frames[_CALL_CODE] = _name_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve ``scope`` through the app, watching the loop and noting the request."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # First call, or a new loop (a test client per request, no lifespan): watch
            # the loop that serves now; the old one's watching ends with it.
            if self._loop is not None:
                self.watcher.stop()
            self._loop = loop
            self.watcher.start(loop)
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, receive, self._stop_after_shutdown(send))
            return
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        # Nothing is noted per request: a stall finds this frame, and its scope, on the
        # loop thread's stack (see _name_request).
        await self.app(scope, receive, send)

    def _stop_after_shutdown(self, send: Send) -> Send:
        async def send_and_stop(message: Message) -> None:
            await send(message)
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                self.watcher.stop()
                self._loop = None

        return send_and_stop


_CALL_CODE = LoopwatchMiddleware.__call__.__code__


def _name_request(frame: FrameType) -> RequestName | None:
    """The request of a ``LoopwatchMiddleware.__call__`` frame (read by the watchdog)."""
    scope = frame.f_locals.get("scope")
    return RequestName(scope) if isinstance(scope, MutableMapping) else None
