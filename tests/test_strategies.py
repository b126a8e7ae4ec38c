"""Strategies on a real event loop with real pools."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from time import perf_counter

import pytest

from loopwatch import targets
from loopwatch.daemon import workloads
from loopwatch.daemon.executors import DaemonThreadExecutor
from loopwatch.errors import CallTimeoutError, StrategyError
from loopwatch.occupant import Occupant
from loopwatch.strategies import (
    BlockingStrategy,
    Call,
    CooperativeStrategy,
    DaskStrategy,
    ExecutorStrategy,
    ProcessStrategy,
    ThreadStrategy,
)
from tests import targets as test_targets
from tests.waiting import poll, wait_until


async def lags_while(
    coro: asyncio.Future[object] | asyncio.Task[object], period: float = 0.005
) -> list[float]:
    """How late each firing of a ``period`` timer was while ``coro`` ran."""
    lags = []
    while not coro.done():
        due = perf_counter() + period
        await asyncio.sleep(period)
        lags.append(perf_counter() - due)
    return lags


async def test_blocking_runs_on_the_loop_and_marks_the_occupant() -> None:
    """The blocking strategy names its worker while the call runs on the loop."""
    occupant = Occupant()
    seen: list[str | None] = []

    def look() -> None:
        seen.append(occupant.worker)

    await BlockingStrategy(occupant).call(Call(look, {}, "w"), 5.0)
    assert seen == ["w"]
    assert occupant.worker is None


async def test_blocking_overrun_is_a_timeout_after_the_fact() -> None:
    """A blocking call cannot be interrupted; over its timeout it counts as one."""
    with pytest.raises(TimeoutError):
        await BlockingStrategy(Occupant()).call(Call(test_targets.block, {"seconds": 0.05}), 0.01)


async def test_cooperative_slice_keeps_lag_near_the_slice() -> None:
    """A 5 ms slice: a timer waiting on the loop is late by about one slice, not the call."""
    strategy = CooperativeStrategy(slice=0.005)
    task = asyncio.ensure_future(strategy.call(Call(workloads.countdown, {"n": 5_000_000}), 30.0))
    lags = await lags_while(task)
    assert await task == 5_000_000
    # The timer fired all along the call (~150 ms, longer on a loaded host), about a slice
    # late. Not the worst lateness: beside CPU hogs one preemption alone can be 60 ms.
    assert len(lags) >= 10
    assert statistics.median(lags) < 0.02


async def test_cooperative_yield_every_counts_safe_points() -> None:
    """``yield_every`` gives the loop back every N safe points (the tutorial's method)."""
    strategy = CooperativeStrategy(yield_every=1)
    ticks = 0

    async def count_ticks() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    counter = asyncio.create_task(count_ticks())
    assert (
        await strategy.call(Call(workloads.countdown, {"n": 50_000, "chunk": 1000}), 5.0) == 50_000
    )
    counter.cancel()
    assert ticks >= 40


async def test_cooperative_timeout_closes_the_generator() -> None:
    """A timeout stops the generator at a safe point."""
    strategy = CooperativeStrategy()
    started = perf_counter()
    with pytest.raises(TimeoutError):
        await strategy.call(Call(test_targets.spin_gen, {"seconds": 5.0}), 0.1)
    assert perf_counter() - started < 1.0


async def test_thread_timeout_is_raised_at_once_with_what_still_runs() -> None:
    """At its timeout the call raises; ``still_running`` ends when the thread is free again."""
    strategy = ThreadStrategy(max_workers=1)
    started = perf_counter()
    with pytest.raises(CallTimeoutError) as info:
        await strategy.call(Call(test_targets.block, {"seconds": 0.3}), 0.05)
    assert perf_counter() - started < 0.2
    assert info.value.still_running is not None
    await info.value.still_running
    assert perf_counter() - started >= 0.29
    assert await strategy.call(Call(targets.noop), 1.0) is None
    await strategy.aclose(1.0)


async def test_process_runs_generators_in_a_child_and_survives_a_killed_child() -> None:
    """Generators run to completion in a child; a dead child breaks one call only."""
    strategy = ProcessStrategy(max_workers=1, start_method="fork")
    await strategy.start()
    try:
        child = await strategy.call(Call(test_targets.pid), 10.0)
        assert child != os.getpid()
        assert await strategy.call(Call(workloads.countdown, {"n": 10_000}), 10.0) == 10_000
        with pytest.raises(BrokenProcessPool):
            await strategy.call(Call(test_targets.die), 10.0)
        assert await strategy.call(Call(workloads.countdown, {"n": 10}), 10.0) == 10
    finally:
        await strategy.aclose(2.0)


async def test_process_close_kills_children_still_busy() -> None:
    """Children busy past the close deadline are killed: nothing outlives the daemon."""
    strategy = ProcessStrategy(max_workers=1, start_method="fork")
    await strategy.start()
    pool = strategy.pool
    processes = list(pool._processes.values())  # type: ignore[attr-defined]
    call = asyncio.ensure_future(strategy.call(Call(test_targets.hang), 60.0))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await strategy.aclose(0.3)
    assert time.monotonic() - started < 3
    # Killed by now; on a loaded host the kernel may take a moment to let them go.
    poll(lambda: not any(p.is_alive() for p in processes), timeout=5.0, what="children gone")
    call.cancel()
    with pytest.raises((asyncio.CancelledError, BrokenProcessPool)):
        await call
    assert strategy.pool is pool  # closed: the broken pool is not rebuilt


async def test_executor_factory_must_return_an_executor() -> None:
    """The factory's result is checked."""
    strategy = ExecutorStrategy.from_factory("loopwatch.daemon.executors:daemon_thread_executor")
    assert isinstance(strategy.pool, DaemonThreadExecutor)
    assert await strategy.call(Call(workloads.countdown, {"n": 5}), 5.0) == 5
    await strategy.aclose(1.0)
    with pytest.raises(StrategyError, match="returned int, not a concurrent.futures.Executor"):
        ExecutorStrategy.from_factory("tests.targets:pid")
    with pytest.raises(StrategyError, match='executor factory "tests.targets:fail" failed'):
        ExecutorStrategy.from_factory("tests.targets:fail")


def test_drive_refuses_a_coroutine_that_slipped_through() -> None:
    """A hidden coroutine fails loudly instead of 'succeeding' without running."""
    with pytest.raises(TypeError, match="returned an awaitable"):
        targets.drive(test_targets.async_target, (), {})


def test_daemon_thread_executor_limits_concurrency_and_refuses_after_shutdown() -> None:
    """The example executor runs at most max_workers at once and stops on shutdown."""
    executor = DaemonThreadExecutor(max_workers=2)
    started = perf_counter()
    futures = [executor.submit(test_targets.block, 0.1) for _ in range(4)]
    assert [f.result(5) for f in futures] == [0.1] * 4
    assert perf_counter() - started >= 0.19
    executor.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(targets.noop)
    with pytest.raises(ValueError, match="max_workers must be >= 1"):
        DaemonThreadExecutor(0)


async def test_a_local_cluster_whose_client_fails_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An embedded cluster is not left running when its Client cannot be made (injected)."""
    import distributed

    from tests.daemon_process import children_of

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("client refused (injected fault)")

    before = set(children_of(os.getpid()))

    def cluster_left() -> list[bytes]:
        cmdlines = [_cmdline(pid) for pid in set(children_of(os.getpid())) - before]
        # multiprocessing's resource tracker stays for the process's life: not the cluster's.
        return [c for c in cmdlines if c is not None and b"resource_tracker" not in c]

    monkeypatch.setattr(distributed, "Client", refuse)
    strategy = DaskStrategy(n_workers=1)
    with pytest.raises(StrategyError, match="client refused"):
        await strategy.start()
    with contextlib.suppress(TimeoutError):
        await wait_until(lambda: not cluster_left(), timeout=10)
    assert cluster_left() == []


def _cmdline(pid: int) -> bytes | None:
    """``pid``'s command line, None once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except FileNotFoundError:
        return None


def test_a_warm_up_whose_calls_are_cancelled_by_a_close_returns() -> None:
    # ProcessStrategy.start warms its pool up in a thread; aclose cancels what is still
    # queued. A cancelled call never wakes concurrent.futures.wait: the warm-up's thread
    # hung, and asyncio.run's executor shutdown with it (#33: the start-up hang).
    import concurrent.futures
    import threading

    from loopwatch.strategies.process import _warm_up

    pool = concurrent.futures.ThreadPoolExecutor(1)
    release = threading.Event()
    pool.submit(release.wait, 10)  # the one worker is busy: the warm-up's calls queue
    warming = threading.Thread(target=_warm_up, args=(pool, 2), daemon=True)
    warming.start()
    poll(lambda: pool._work_queue.qsize() == 2, what="the warm-up's calls queued")
    pool.shutdown(wait=False, cancel_futures=True)
    warming.join(5)
    alive = warming.is_alive()
    release.set()
    assert not alive, "the warm-up still waits for calls that were cancelled"
    _warm_up(pool, 2)  # a pool shut down before the warm-up: nothing to start
