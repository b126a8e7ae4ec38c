"""``run_sync``: the contract of ``asyncio.to_thread``, kept; ``Offload`` for loopwatch's options."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

import loopwatch
from loopwatch import CallTimeoutError, Offload, ThreadPool, ThreadStrategy, run_sync
from tests.waiting import wait_until

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")


def scaled(x: int, *, scale: int = 1, timeout: float | None = None) -> tuple[int, float | None]:
    return x * scale, timeout


async def test_every_keyword_goes_to_the_function_timeout_included() -> None:
    assert await run_sync(scaled, 3, scale=2) == (6, None)
    assert await run_sync(scaled, 3, timeout=5) == (3, 5)
    assert await run_sync(dict, fn=1, strategy=2, name=3) == {"fn": 1, "strategy": 2, "name": 3}


async def test_context_variables_are_seen_in_the_thread() -> None:
    assert await run_sync(request_id.get, "unset") == "unset"
    request_id.set("req-42")
    assert await run_sync(request_id.get) == "req-42"


async def test_the_calls_run_in_other_threads() -> None:
    assert await run_sync(threading.get_ident) != threading.get_ident()


async def test_exceptions_come_back_as_raised() -> None:
    error = KeyError("missing")

    def fail() -> None:
        raise error

    with pytest.raises(KeyError) as info:
        await run_sync(fail)
    assert info.value is error
    assert any(frame.name == "fail" for frame in info.traceback)


async def test_an_async_function_is_refused_not_returned_unrun() -> None:
    async def coro() -> int:
        return 1

    with pytest.raises(TypeError, match="returned an awaitable"):
        await run_sync(coro)  # type: ignore[unused-coroutine]


async def test_cancellation_drops_the_result_and_leaves_the_call_to_finish() -> None:
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(5)
        finished.set()
        return "dropped"

    task = asyncio.create_task(run_sync(slow))
    await wait_until(started.is_set)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not finished.is_set()
    release.set()
    await wait_until(finished.is_set)


async def test_a_cancelled_call_still_queued_never_starts() -> None:
    pool = ThreadPool(1)
    release = threading.Event()
    ran: list[str] = []
    busy = pool.submit(release.wait, (5,), {})
    queued = pool.submit(ran.append, ("queued",), {})
    queued.future.cancel()
    release.set()
    await busy.future
    assert await pool.submit(ran.append, ("next",), {}).future is None
    assert ran == ["next"]
    await pool.aclose(1.0)


async def test_a_call_past_its_timeout_is_counted_and_still_runs_to_its_end() -> None:
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.3)
        finished.set()

    within = Offload(timeout=0.05, name="billing")
    started = time.perf_counter()
    with pytest.raises(CallTimeoutError) as info:
        await within(slow)
    assert time.perf_counter() - started < 0.25
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, loopwatch.LoopwatchError)
    assert not finished.is_set()
    assert info.value.still_running is not None
    await info.value.still_running
    assert finished.is_set()


async def test_offload_passes_every_argument_to_the_function() -> None:
    assert await Offload(timeout=5, name="x")(scaled, 2, scale=3, timeout=9) == (6, 9)


async def test_aclose_with_calls_in_flight_waits_for_them_and_cancels_the_queued() -> None:
    strategy = ThreadStrategy(pool=ThreadPool(3, name="closing"))
    offload = Offload(strategy)
    calls = [asyncio.create_task(offload(time.sleep, 0.2)) for _ in range(3)]
    queued = asyncio.create_task(offload(time.sleep, 5))  # never started: cancelled
    await wait_until(lambda: strategy.pool.active == 3 and strategy.pool.queued == 1)
    await strategy.aclose(2.0)
    assert strategy.pool.pending == 0
    assert await asyncio.gather(*calls) == [None, None, None]
    with pytest.raises(loopwatch.StrategyError):
        await queued
    with pytest.raises(loopwatch.StrategyError, match="closed"):
        await offload(time.sleep, 0)


async def test_aclose_leaves_a_call_past_its_timeout_to_its_thread() -> None:
    release = threading.Event()
    pool = ThreadPool(1)
    stuck = pool.submit(release.wait, (10,), {}).future
    started = time.monotonic()
    await pool.aclose(0.1)
    assert time.monotonic() - started < 5
    assert not stuck.done()
    release.set()
    assert await stuck is True


async def test_ten_thousand_calls_grow_no_threads_fds_or_memory() -> None:
    def fds() -> int:
        return len(list(Path("/proc/self/fd").iterdir()))

    async def burst(n: int) -> None:
        for start in range(0, n, 100):
            await asyncio.gather(*(run_sync(abs, -i) for i in range(start, start + 100)))

    await burst(1_000)  # warm: the pool's threads, the inbox, the caches
    gc.collect()
    threads, descriptors = threading.active_count(), fds()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    await burst(10_000)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # A thread that just gave its slot back is not idle yet: a call may start another
    # beside it, and the spare ends when idle. Bounded, not grown with the calls.
    assert threading.active_count() <= threads + loopwatch.offload.default_pool().max_workers
    assert fds() <= descriptors
    assert grown < 100_000, f"{grown} bytes kept after 10,000 calls"


async def test_each_loop_has_a_default_pool_of_its_own() -> None:
    def pool_of_a_new_loop() -> int:
        async def pool_id() -> int:
            return id(loopwatch.offload.default_pool())

        return asyncio.run(pool_id())

    main = id(loopwatch.offload.default_pool())
    assert await asyncio.to_thread(pool_of_a_new_loop) != main
