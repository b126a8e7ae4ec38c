"""dask vs process: per-call overhead (no-op) and throughput (0.1 s CPU calls) on this machine.

Both through loopwatch's strategies, from one event loop: a 2-process ProcessPoolExecutor
and an embedded 2-worker LocalCluster (1 thread each).

Usage: python benchmarks/dask_vs_process.py [--rounds 5]
Writes benchmarks/results/dask_vs_process.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from statistics import median
from typing import Any

from loopwatch import targets
from loopwatch.daemon.bench.overhead import seconds_per_call
from loopwatch.strategies import Call, DaskStrategy, ProcessStrategy, Strategy

ROOT = Path(__file__).resolve().parent.parent


def cpu_100ms() -> int:
    end = time.perf_counter() + 0.1
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


async def per_call(strategy: Strategy, call: Call, n: int, concurrent: int) -> float:
    return await seconds_per_call(lambda: strategy.call(call, 60.0), n, concurrent)


async def measure(name: str, strategy: Strategy, rounds: int) -> dict[str, Any]:
    await strategy.start()
    noop, cpu = Call(targets.noop), Call(cpu_100ms)
    await per_call(strategy, noop, 20, 1)
    sequential = [await per_call(strategy, noop, 200, 1) for _ in range(rounds)]
    concurrent = [await per_call(strategy, noop, 500, 100) for _ in range(rounds)]
    cpu_rate = [1 / await per_call(strategy, cpu, 20, 4) for _ in range(rounds)]
    await strategy.aclose(10.0)
    return {
        "strategy": name,
        "noop_sequential_us": round(median(sequential) * 1e6, 1),
        "noop_100_concurrent_us": round(median(concurrent) * 1e6, 1),
        "cpu_100ms_calls_per_s": round(median(cpu_rate), 2),
        "rounds": rounds,
    }


async def main_async(rounds: int) -> list[dict[str, Any]]:
    return [
        await measure("process (2 workers)", ProcessStrategy(max_workers=2), rounds),
        await measure(
            "dask (embedded LocalCluster, 2x1)",
            DaskStrategy(n_workers=2),
            rounds,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = asyncio.run(main_async(args.rounds))
    (ROOT / "benchmarks/results/dask_vs_process.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(
        "| strategy | no-op, sequential | no-op, 100 concurrent (per call) | 0.1 s CPU calls/s (4 in flight) |"
    )
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['strategy']} | {r['noop_sequential_us']:.0f} µs | {r['noop_100_concurrent_us']:.0f} µs "
            f"| {r['cpu_100ms_calls_per_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
