"""Idle cost of watching: CPU share of loopwatch with no workers vs bare asyncio processes.

Usage: python benchmarks/idle_cost.py [--seconds 20] [--runs 3] [--baseline DIR]

``--baseline DIR`` also runs the daemon of another checkout (e.g. a ``git worktree`` of
an earlier commit), interleaved with this one, to compare the two on the same machine.
Writes benchmarks/results/idle_cost.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from loopwatch.causes import schedstat

ROOT = Path(__file__).resolve().parent.parent

BARE_TICKER = """
import asyncio, time
async def main():
    while True:
        await asyncio.sleep(1.0)
        print(time.time(), flush=True)
asyncio.run(main())
"""
BARE_10MS = """
import asyncio
async def main():
    while True:
        await asyncio.sleep(0.01)
asyncio.run(main())
"""
FLOOR = "bare asyncio, 10 ms sleep loop (timer floor)"


def cpu_seconds(pid: int) -> float:
    """CPU seconds of the process's threads now, to the nanosecond (``schedstat``).

    ``/proc/PID/stat`` counts 10 ms ticks: ±0.05% of a core over 20 s, the size of
    what is measured here.
    """
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        found = schedstat(int(task.name), pid)
        if found is not None:  # None: a thread that ended meanwhile
            total += found[0]
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(cmd: list[str], seconds: float, warmup: float = 3.0, cwd: Path = ROOT) -> float:
    """CPU share of one core used by ``cmd`` over ``seconds`` after ``warmup``."""
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd, env=env
    )
    try:
        time.sleep(warmup)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
    finally:
        proc.terminate()
        proc.wait(20)
    return (cpu1 - cpu0) / (t1 - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline", type=Path, default=None, metavar="DIR")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "idle.toml")
        config.write_text(f'[metrics]\nport = {free_port()}\n[logging]\nformat = "json"\n')
        variants = {
            "bare asyncio, 1 s ticker": [sys.executable, "-c", BARE_TICKER],
            FLOOR: [sys.executable, "-c", BARE_10MS],
            "loopwatch, no workers (10 ms probe, watchdog, ticker, endpoint)": [
                sys.executable, "-m", "loopwatch.daemon", "run", "-c", str(config),
            ],
        }  # fmt: skip
        daemon_cmd = [sys.executable, "-m", "loopwatch.daemon", "run", "-c", str(config)]
        cwds = dict.fromkeys(variants, ROOT)
        if args.baseline is not None:
            name = f"loopwatch at {args.baseline.name} (baseline), no workers"
            variants[name] = daemon_cmd
            cwds[name] = args.baseline.resolve()
        results: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.runs):  # interleaved: drift on a shared host hits all alike
            for name, cmd in variants.items():
                results[name].append(measure(cmd, args.seconds, cwd=cwds[name]))
    # The floor drifts with the host (0.85% to 1.75% an hour apart): each round's ratio
    # is to the floor measured beside it, and the median is of those.
    floor = results[FLOOR]
    rows = [
        {
            "variant": name,
            "cpu_share_median": median(v),
            "ratio_to_floor_median": median(x / f for x, f in zip(v, floor, strict=True)),
            "runs": v,
        }
        for name, v in results.items()
    ]
    out = ROOT / "benchmarks/results/idle_cost.json"
    out.write_text(json.dumps({"seconds": args.seconds, "rows": rows}, indent=2) + "\n")
    print("| variant | CPU share of one core (median) | ratio to the floor (median) | runs |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        runs = ", ".join(f"{r * 100:.3f}%" for r in row["runs"])
        print(f"| {row['variant']} | {row['cpu_share_median'] * 100:.3f}% "
              f"| {row['ratio_to_floor_median']:.2f}x | {runs} |")  # fmt: skip


if __name__ == "__main__":
    main()
