"""Stall events as typed objects: the ``on_stall`` callback and ``stall_events()``."""

from __future__ import annotations

import asyncio
import threading
import time

from prometheus_client import CollectorRegistry

import loopwatch
from tests.helpers import library_logs
from tests.waiting import wait_until


def block_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # the culprit line the events must name


async def test_on_stall_receives_each_stall_as_an_object_while_it_lasts() -> None:
    received: list[loopwatch.StallEvent] = []
    async with loopwatch.watch(
        CollectorRegistry(), stall_threshold=0.05, dump_after=0, on_stall=received.append
    ) as watcher:
        await asyncio.sleep(0.05)
        block_the_loop(0.8)
        await wait_until(lambda: any(not e.ongoing for e in received), timeout=5)
    assert watcher.stalls == 1
    ongoing = [e for e in received if e.ongoing]
    final = [e for e in received if not e.ongoing]
    assert len(ongoing) == 1, "told while the loop was still stuck"
    assert len(final) == 1
    event = final[0]
    assert event.cause == "wait"
    assert event.culprit.endswith(" block_the_loop")
    assert "test_stall_events.py:" in event.culprit
    assert 0.6 < event.duration < 1.5
    assert abs(sum(c.seconds for c in event.culprits) - event.duration) < 0.01
    assert event.as_dict()["culprits"][0]["culprit"] == event.culprit
    assert ongoing[0].at < final[0].at


async def test_stall_events_iterates_on_the_loop_and_ends_when_watching_stops() -> None:
    got: list[loopwatch.StallEvent] = []
    async with loopwatch.watch(CollectorRegistry(), stall_threshold=0.05, dump_after=0) as watcher:

        async def consume() -> None:
            async for event in watcher.stall_events():
                got.append(event)  # noqa: PERF401 - one at a time, as they come

        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        block_the_loop(0.2)
        await wait_until(lambda: bool(got), timeout=5)
    await asyncio.wait_for(consumer, 2)
    assert [e.ongoing for e in got] == [False]
    assert got[0].duration >= 0.15  # its cause is the first test's to check


async def test_a_failing_receiver_does_not_stop_the_watching() -> None:
    def broken(_: loopwatch.StallEvent) -> None:
        raise RuntimeError("receiver bug")

    with library_logs() as logs:
        async with loopwatch.watch(
            CollectorRegistry(), stall_threshold=0.05, dump_after=0, on_stall=broken
        ) as watcher:
            await asyncio.sleep(0.05)
            block_the_loop(0.2)
            await wait_until(lambda: watcher.stalls == 1, timeout=5)
            await asyncio.sleep(0.05)
            block_the_loop(0.2)
            await wait_until(lambda: watcher.stalls == 2, timeout=5)
    failures = [e for e in logs if e["event"] == "stall_receiver_failed"]
    assert failures
    assert failures[0]["error"] == "RuntimeError: receiver bug"


def test_every_public_name_resolves() -> None:
    """``loopwatch`` imports lazily: each name of ``__all__`` still comes when asked for."""
    for name in loopwatch.__all__:
        assert getattr(loopwatch, name) is not None, name
    assert loopwatch.__version__


async def test_utilization_estimated_names_the_loop_and_does_not_blame_uvloop() -> None:
    """On plain asyncio (not loopwatch.new_event_loop()) the message names that loop."""
    from loopwatch import watcher as watcher_module

    watcher_module._said.clear()
    with library_logs() as logs:
        async with loopwatch.watch(CollectorRegistry()):
            pass
    [said] = [e for e in logs if e["event"] == "loop_utilization_estimated"]
    assert "asyncio" in said["reason"]
    assert said["reason"].startswith(said["loop"])
    assert "uvloop" not in said["reason"]
    assert "--loop loopwatch:new_event_loop" in said["fix"]


async def test_two_watch_users_share_one_watcher_and_both_get_every_stall() -> None:
    """A library and the application both call watch(): the loop is watched once."""
    library: list[loopwatch.StallEvent] = []
    application: list[loopwatch.StallEvent] = []
    registry = CollectorRegistry()

    def watchdogs() -> int:
        return sum(t.name == "loopwatch-watchdog" for t in threading.enumerate())

    before = watchdogs()
    async with loopwatch.watch(registry, dump_after=0, on_stall=application.append) as first:
        async with loopwatch.watch(CollectorRegistry(), on_stall=library.append) as second:
            assert second is first
            assert watchdogs() == before + 1
            await asyncio.sleep(0.05)
            block_the_loop(0.3)
            await wait_until(lambda: len(library) == 1 and len(application) == 1, timeout=5)
        # The library left: the application still watches.
        assert first.watchdog._thread is not None
        await asyncio.sleep(0.05)
        block_the_loop(0.3)
        await wait_until(lambda: len(application) == 2, timeout=5)
    assert len(library) == 1
    assert first.stalls == 2
    assert registry.get_sample_value("loopwatch_event_loop_stalls_total") == 2
    assert watchdogs() == before
