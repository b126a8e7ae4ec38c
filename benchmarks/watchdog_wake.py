"""CPU per wake of the idle stall watchdog, read from its thread's ``schedstat``.

Usage: python benchmarks/watchdog_wake.py [--seconds 8] [--runs 5] [--baseline DIR]

Each run is a process with a ``Watcher`` on an idle asyncio loop (10 ms probe, 0.1 s
threshold); after a 2 s warm-up it counts the watchdog thread's nanoseconds on a CPU and
its wakes over ``--seconds``. Exact where ``/proc/PID/stat``'s 10 ms ticks are not: the
part of the idle cost (``idle_cost.py``) the watchdog adds. ``--baseline DIR`` runs
another checkout's library interleaved with this one's. Writes
benchmarks/results/watchdog_wake.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent

ONE_RUN = """
import asyncio, sys, threading, time
from prometheus_client import CollectorRegistry
from loopwatch.watcher import Watcher

def clocks():
    [thread] = [t for t in threading.enumerate() if t.name == "loopwatch-watchdog"]
    with open(f"/proc/self/task/{thread.native_id}/schedstat") as f:
        on_cpu, _, runs = f.read().split()
    return int(on_cpu) / 1e9, int(runs), time.perf_counter()

async def main():
    watcher = Watcher(registry=CollectorRegistry(), log_stalls=False)
    watcher.start()
    await asyncio.sleep(2.0)
    cpu0, runs0, t0 = clocks()
    await asyncio.sleep(float(sys.argv[1]))
    cpu1, runs1, t1 = clocks()
    watcher.stop()
    print(cpu1 - cpu0, runs1 - runs0, t1 - t0)

asyncio.run(main())
"""


def one_run(source: Path, seconds: float) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(source)
    out = subprocess.run(
        [sys.executable, "-c", ONE_RUN, str(seconds)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu_s, wakes, wall_s = (float(x) for x in out.split())
    return {"us_per_wake": cpu_s / wakes * 1e6, "wakes_per_s": wakes / wall_s,
            "cpu_share": cpu_s / wall_s}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline", type=Path)
    args = parser.parse_args()
    sources = {"this checkout": ROOT}
    if args.baseline is not None:
        sources[f"baseline {args.baseline.name}"] = args.baseline.resolve()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in sources}
    for _ in range(args.runs):
        for name, source in sources.items():
            runs[name].append(one_run(source, args.seconds))
    rows = [
        {
            "variant": name,
            "us_per_wake_median": median(r["us_per_wake"] for r in results),
            "cpu_share_median": median(r["cpu_share"] for r in results),
            "runs": results,
        }
        for name, results in runs.items()
    ]
    out = ROOT / "benchmarks/results/watchdog_wake.json"
    out.write_text(json.dumps({"seconds": args.seconds, "rows": rows}, indent=2) + "\n")
    print("| variant | µs of CPU per wake (median) | share of a core | wakes/s |")
    print("| --- | --- | --- | --- |")
    for row, results in zip(rows, runs.values(), strict=True):
        wakes = median(r["wakes_per_s"] for r in results)
        print(f"| {row['variant']} | {row['us_per_wake_median']:.0f} "
              f"| {100 * row['cpu_share_median']:.3f}% | {wakes:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
