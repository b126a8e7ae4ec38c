"""Occupant: who runs on the loop thread, and on each pool thread, as the watchdog sees it.

Thread contract: ``worker`` and ``last`` are written only by the loop thread (the strategies that
run code on the loop); ``requests`` only by the loop thread (the web middlewares);
``POOL_CALLS`` by each pool thread for itself. The watchdog thread only reads, while
the loop may be stuck. Every write is one store of an immutable value into an
attribute or a dict, atomic under the GIL, so no lock is taken on either side: a lock
held by a stuck loop would stop the watchdog too.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from threading import get_ident
from types import CodeType, FrameType, FunctionType
from typing import Any

from loopwatch import targets

# Pool thread ident -> (worker, code of the target) of the latest call that thread ran.
# Kept after the call ends: a call that held the GIL has often returned by the time the
# watchdog gets the GIL back, and the watchdog still has to name it. The code object,
# not the callable: ``run_sync(big.method)`` must not keep ``big`` alive.
POOL_CALLS: dict[int, tuple[str, CodeType | None]] = {}
os.register_at_fork(after_in_child=POOL_CALLS.clear)  # the other threads are gone


def code_of(fn: targets.Target) -> CodeType | None:
    """The code of the function under ``fn``'s partials, decorators and methods, if any."""
    if type(fn) is FunctionType and "__wrapped__" not in fn.__dict__:
        return fn.__code__  # the common case, at a fraction of ``unwrap``'s cost
    code = getattr(targets.unwrap(fn), "__code__", None)
    return code if isinstance(code, CodeType) else None


def run_timed(
    worker: str, fn: targets.Target, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[float, Any]:
    """Run a call in a pool thread, noting which worker's target the thread runs.

    Returns when the call started (for its queue wait) with its result.

    Wall-clock time: comparable across the processes of one host and, roughly, hosts.
    """
    started = time.time()
    POOL_CALLS[get_ident()] = (worker, code_of(fn))
    return started, targets.drive(fn, args, kwargs)


def run_untimed(
    fn: targets.Target, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[float, Any]:
    """``run_timed`` for a caller that keeps no queue wait: less to pickle, nothing to note.

    In a process pool child nothing reads ``POOL_CALLS``: no watchdog runs there.
    """
    return 0.0, targets.drive(fn, args, kwargs)


class Occupant:
    """The worker (daemon) and the request (library mode) whose code runs on the loop."""

    __slots__ = ("gil_stalls", "last", "request_frames", "requests", "worker")

    def __init__(self) -> None:
        self.worker: str | None = None
        # (worker, target, start, end) of the latest blocking call, end = inf while it
        # runs: a stall the watchdog could only look at after it ended (native code or a
        # collection held the GIL) is still put on its worker and target.
        self.last: tuple[str, targets.Target | None, float, float] = ("", None, 0.0, 0.0)
        # Task -> its request (str() gives "METHOD /route/{template}"), set by the web
        # middlewares per request and formatted only when a stall names it.
        self.requests: dict[asyncio.Task[Any], object] = {}
        # Code object -> how to name the request from a frame running it: a middleware
        # whose frame holds the request costs nothing per request, the watchdog finds
        # that frame on the loop thread's stack when a stall asks.
        self.request_frames: dict[CodeType, Callable[[FrameType], object]] = {}
        # Worker -> stall seconds the watchdog charged to it with cause "gil" (written by
        # the watchdog thread only): the evidence ``auto`` moves a worker to a process on.
        self.gil_stalls: dict[str, float] = {}
