"""One cell of benchmarks/offload.py, in a fresh interpreter: calls/s of one offload method.

Usage: python benchmarks/offload_cell.py METHOD IN_FLIGHT WORK SECONDS; prints calls/s.
Every method gets 4 threads and a 1 ms switch interval (the daemon's default).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

THREADS = 4
PROCESSES = 2
WARMUP_S = 0.5


def noop() -> None:
    pass


def io_50us() -> None:
    time.sleep(50e-6)  # a short call that lets go of the GIL, like a cached stat or read


def work(name: str, method: str) -> Callable[[], None]:
    """The call to offload; a process pool gets an importable one (this file is __main__)."""
    if "process" in method.lower():
        from loopwatch.daemon.workloads import blocking_io
        from loopwatch.targets import noop as importable_noop

        if name == "noop":
            return importable_noop
        return functools.partial(blocking_io, 50e-6)
    return {"noop": noop, "50us": io_50us}[name]


def offloader(method: str) -> Callable[[Callable[[], Any]], Awaitable[Any]]:
    loop = asyncio.get_running_loop()
    if method in ("to_thread", "run_in_executor", "uvloop run_in_executor"):
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(THREADS))
    if method == "to_thread":
        return asyncio.to_thread
    if method in ("run_in_executor", "uvloop run_in_executor"):
        return lambda fn: loop.run_in_executor(None, fn)
    if method == "anyio":
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        return anyio.to_thread.run_sync
    if method in ("loopwatch.run_sync", "uvloop loopwatch.run_sync"):
        import loopwatch

        loopwatch.set_default_threads(THREADS)
        return loopwatch.run_sync
    if method == "run_in_executor(ProcessPoolExecutor)":
        import multiprocessing

        processes = concurrent.futures.ProcessPoolExecutor(
            PROCESSES, mp_context=multiprocessing.get_context("forkserver")
        )
        return lambda fn: loop.run_in_executor(processes, fn)
    if method == "loopwatch process":
        import loopwatch

        strategy = loopwatch.ProcessStrategy(max_workers=PROCESSES, start_method="forkserver")
        return loopwatch.Offload(strategy)
    raise SystemExit(f"unknown method {method!r}")


async def measure(method: str, in_flight: int, fn: Callable[[], None], seconds: float) -> float:
    offload = offloader(method)
    await asyncio.gather(*(offload(fn) for _ in range(PROCESSES * 2)))  # pools warm
    done = 0
    start = time.perf_counter()
    counting_from = start + WARMUP_S
    end = counting_from + seconds
    counted_at: tuple[float, int] | None = None

    async def slot() -> None:
        nonlocal done, counted_at
        while (now := time.perf_counter()) < end:
            if counted_at is None and now >= counting_from:
                counted_at = (now, done)
            await offload(fn)
            done += 1

    await asyncio.gather(*(slot() for _ in range(in_flight)))
    assert counted_at is not None
    return (done - counted_at[1]) / (time.perf_counter() - counted_at[0])


def main() -> None:
    method, in_flight, kind, seconds = (
        sys.argv[1],
        int(sys.argv[2]),
        sys.argv[3],
        float(sys.argv[4]),
    )
    sys.setswitchinterval(0.001)
    coro = measure(method, in_flight, work(kind, method), seconds)
    if method.startswith("uvloop"):
        import uvloop

        rate = uvloop.run(coro)
    else:
        rate = asyncio.run(coro)
    print(rate)


if __name__ == "__main__":
    main()
