"""Waiting for a condition instead of sleeping a fixed time: one way, for every test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(
    probe: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "the condition",
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``probe`` until it returns something true, and return that.

    An exception of ``retry_on`` counts as not yet. After ``timeout`` seconds:
    AssertionError naming ``what`` and the last answer.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            last: T | BaseException = probe()
        except retry_on as exc:
            last = exc
        if not isinstance(last, BaseException) and last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not within {timeout} s; last: {last!r}")
        time.sleep(interval)


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Let the loop run until ``cond()`` holds; TimeoutError after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)
