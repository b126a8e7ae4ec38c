"""Offload overhead side by side: loopwatch's strategies against the usual one-liners.

Every method runs the same target from the same loop in the same process, one after
another, sequentially and 100 at a time. Run in a fresh interpreter per invocation.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import multiprocessing
import sys
from collections.abc import Awaitable, Callable
from statistics import median
from time import perf_counter
from typing import Any

from prometheus_client import CollectorRegistry

from loopwatch.daemon.config import WorkerConfig
from loopwatch.daemon.metrics import Metrics
from loopwatch.daemon.workers import Worker
from loopwatch.daemon.workloads import generated_document
from loopwatch.strategies import ProcessStrategy, Strategy, ThreadStrategy
from loopwatch.throttle import LogThrottle

CONCURRENT = 100
OneCall = Callable[[], Awaitable[Any]]


def payload_len(data: bytes = b"") -> int:
    """The payload target: receives the document, returns a small result."""
    return len(data)


def _loopwatch(strategy: Strategy, kwargs: dict[str, Any]) -> OneCall:
    """The real per-call path of a worker: timeout, strategy, metrics."""
    cfg = WorkerConfig.model_construct(
        name="overhead",
        target="loopwatch.daemon.bench.overhead:payload_len",
        kwargs=kwargs,
        strategy=strategy.name,
        concurrency=1,
        interval=0.0,
        timeout=60.0,
        executor=None,
    )
    worker = Worker(cfg, strategy, Metrics(CollectorRegistry()), LogThrottle(print, 60))
    return worker._call_once  # the exact per-call path is what we measure


async def methods(payload: bytes) -> dict[str, OneCall]:
    """Each method as a zero-argument coroutine function doing one call."""
    loop = asyncio.get_running_loop()
    fn = functools.partial(payload_len, payload)
    kwargs = {"data": payload}
    thread_pool = concurrent.futures.ThreadPoolExecutor(4)
    process_pool = concurrent.futures.ProcessPoolExecutor(
        2, mp_context=multiprocessing.get_context("forkserver")
    )
    thread = ThreadStrategy(max_workers=4)
    process = ProcessStrategy(max_workers=2)
    await process.start()
    await asyncio.gather(*(loop.run_in_executor(process_pool, payload_len) for _ in range(2)))
    table: dict[str, OneCall] = {
        "loopwatch thread": _loopwatch(thread, kwargs),
        "asyncio.to_thread": lambda: asyncio.to_thread(fn),
        "loop.run_in_executor(thread)": lambda: loop.run_in_executor(thread_pool, fn),
    }
    # The peers come with the bench extra; a plain install measures without them.
    with contextlib.suppress(ImportError):
        import anyio.to_thread  # noqa: PLC0415

        table["anyio.to_thread.run_sync"] = lambda: anyio.to_thread.run_sync(fn)
    with contextlib.suppress(ImportError):
        from asgiref.sync import sync_to_async  # noqa: PLC0415

        table["asgiref sync_to_async"] = sync_to_async(fn, thread_sensitive=False)
    table["loopwatch process"] = _loopwatch(process, kwargs)
    table["loop.run_in_executor(process)"] = lambda: loop.run_in_executor(process_pool, fn)
    return table


async def seconds_per_call(call: OneCall, n: int, concurrent: int) -> float:
    """Seconds per call: ``n`` calls, ``concurrent`` at a time."""
    started = perf_counter()
    for _ in range(n // concurrent):
        if concurrent == 1:
            await call()
        else:
            await asyncio.gather(*(call() for _ in range(concurrent)))
    return (perf_counter() - started) / n


async def measure(payload_mb: float, calls: int, rounds: int) -> list[dict[str, Any]]:
    """Median seconds per call of every method, sequential and 100 concurrent."""
    payload = generated_document(payload_mb) if payload_mb else b""
    table = await methods(payload)
    rows = []
    for name, call in table.items():
        await seconds_per_call(call, 20, 1)  # warm-up
        sequential = [await seconds_per_call(call, calls, 1) for _ in range(rounds)]
        batch = max(calls, CONCURRENT)
        concurrent = [await seconds_per_call(call, batch, CONCURRENT) for _ in range(rounds)]
        rows.append(
            {
                "method": name,
                "payload": f"{payload_mb:g} MB" if payload_mb else "no-op",
                "sequential_us": round(median(sequential) * 1e6, 1),
                "concurrent_us": round(median(concurrent) * 1e6, 1),
                "rounds": rounds,
            }
        )
    return rows


def main() -> None:
    """``python -m loopwatch.daemon.bench.overhead PAYLOAD_MB CALLS ROUNDS``: rows as JSON."""
    payload_mb, calls, rounds = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(asyncio.run(measure(payload_mb, calls, rounds))))


if __name__ == "__main__":
    main()
