"""``TestWatcher``: the pytest plugin's watcher, watching one test's loop after another."""

from __future__ import annotations

import asyncio
import time

from loopwatch.stall import StallEvent
from loopwatch.testwatch import TestWatcher


def test_stop_returns_only_once_a_stall_of_the_test_is_delivered() -> None:
    """A stall whose report was under way when the test ended reached the next test, or none.

    The watchdog marked the stall reported before handing it over; ``stop`` read that,
    left the watchdog running, and the test's verdict was given without it (the corpus's
    CPU-bound test passed once under load in CI).
    """
    delivered: list[StallEvent] = []

    def slow_receiver(event: StallEvent) -> None:
        if not event.ongoing:
            time.sleep(0.3)  # a slow hand-over: the window the race needs
            delivered.append(event)

    watcher = TestWatcher(0.1, 0.0, slow_receiver)

    async def test_body() -> None:
        assert watcher.start() == "asyncio"
        end = time.perf_counter() + 0.25
        while time.perf_counter() < end:
            pass
        await asyncio.sleep(0.05)  # the loop is back: the watchdog ends the stall now
        watcher.stop()
        assert len(delivered) == 1, "stop returned before the stall was handed over"

    try:
        asyncio.run(test_body())
    finally:
        watcher.close()
    assert delivered[0].duration >= 0.2


def test_tests_without_stalls_leave_the_watchdog_running_and_the_next_one_is_watched() -> None:
    events: list[StallEvent] = []
    watcher = TestWatcher(0.1, 0.0, events.append)

    async def quiet() -> None:
        watcher.start()
        await asyncio.sleep(0.01)
        watcher.stop()

    async def blocking() -> None:
        watcher.start()
        time.sleep(0.2)
        watcher.stop()

    try:
        for _ in range(20):
            asyncio.run(quiet())
        assert watcher.watchdog.running  # kept on between tests
        asyncio.run(blocking())
    finally:
        watcher.close()
    assert [e.ongoing for e in events] == [False]
    assert events[0].duration >= 0.15
