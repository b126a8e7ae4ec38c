"""Stall watchdog accuracy: known blocks on the loop, what the watchdog reported.

Blocks of 50 ms, 100 ms, 200 ms and 1 s, sleeping (blocking I/O) and spinning (CPU-bound,
holding the GIL), 20 each, at the default threshold (100 ms) and at 25 ms. For each:
detected count, reported vs true duration, and whether the stack names the culprit.

Usage: python benchmarks/stall_accuracy.py [--repeats 20]
Writes benchmarks/results/stall_accuracy.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from statistics import median
from typing import Any

import structlog
from daemon.probe import LagProbe
from daemon.watchdog import Occupant, StallWatchdog
from prometheus_client import CollectorRegistry

from daemon.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent


def sleeper(seconds: float) -> None:
    time.sleep(seconds)


def spinner(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def trial(kind: str, seconds: float, threshold: float, repeats: int) -> dict[str, Any]:
    metrics = Metrics(CollectorRegistry())
    probe = LagProbe(metrics.event_loop_lag, 0.01, threshold)
    watchdog = StallWatchdog(
        probe,
        metrics.event_loop_stall,
        metrics.event_loop_stalls,
        Occupant(),
        aggregate_window_s=0.0,
    )
    probe.start(asyncio.get_running_loop())
    watchdog.start()
    culprit = sleeper if kind == "sleep" else spinner
    true_durations = []
    with structlog.testing.capture_logs() as logs:
        for _ in range(repeats):
            await asyncio.sleep(0.15)  # separate the stalls
            started = time.perf_counter()
            culprit(seconds)
            true_durations.append(time.perf_counter() - started)
        await asyncio.sleep(0.3)
        watchdog.stop()
    probe.stop()
    stalls = [e for e in logs if e["event"] == "stall"]
    errors = [abs(s["duration"] - t) for s, t in zip(stalls, true_durations, strict=False)]
    named = sum(1 for s in stalls if s["stack"] and s["stack"][-1].endswith(culprit.__name__))
    return {
        "kind": kind,
        "block_s": seconds,
        "threshold_s": threshold,
        "blocks": repeats,
        "detected": len(stalls),
        "reported_median_s": median(s["duration"] for s in stalls) if stalls else None,
        "true_median_s": median(true_durations),
        "abs_error_max_s": max(errors) if errors else None,
        "culprit_named": named,
    }


async def main_async(repeats: int) -> list[dict[str, Any]]:
    rows = []
    for threshold in (0.1, 0.025):
        for kind in ("sleep", "spin"):
            for seconds in (0.05, 0.1, 0.2, 1.0):
                rows.append(await trial(kind, seconds, threshold, repeats))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rows = asyncio.run(main_async(args.repeats))
    (ROOT / "benchmarks/results/stall_accuracy.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(
        "| threshold | block | kind | detected | reported (median) | true (median) | max error | culprit named |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        reported = f"{r['reported_median_s'] * 1000:.1f} ms" if r["reported_median_s"] else "-"
        error = f"{r['abs_error_max_s'] * 1000:.1f} ms" if r["abs_error_max_s"] is not None else "-"
        print(
            f"| {r['threshold_s'] * 1000:.0f} ms | {r['block_s'] * 1000:.0f} ms | {r['kind']} "
            f"| {r['detected']}/{r['blocks']} | {reported} | {r['true_median_s'] * 1000:.1f} ms | {error} "
            f"| {r['culprit_named']}/{r['detected']} |"
        )


if __name__ == "__main__":
    main()
