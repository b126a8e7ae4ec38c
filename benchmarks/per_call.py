"""Per-call cost as a user sees it: a real daemon vs a bare ``asyncio.to_thread`` loop.

loopwatch: ``loopwatch run`` with one worker calling a no-op target on ``thread`` (4 pool
threads), its worker loop, metrics, probe, watchdog and ticker all running; calls counted
from the endpoint's ``loopwatch_tasks_total``. Baseline: a bare asyncio process calling
``asyncio.to_thread(noop)`` on a 4-thread default executor, at the same switch interval.
Both sequentially (concurrency 1) and with 100 calls in flight.

Usage: python benchmarks/per_call.py [--seconds 5] [--runs 3]
Writes benchmarks/results/per_call.json and prints a markdown table.
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
import urllib.request
from pathlib import Path
from statistics import median

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
SWITCH_INTERVAL = 0.001  # the daemon's default

BARE = """
import asyncio, concurrent.futures, sys, time
sys.setswitchinterval({switch})
def noop(): pass
async def main(concurrency, seconds):
    asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(4))
    done = 0
    end = time.perf_counter() + {warmup} + seconds
    started = None
    async def slot():
        nonlocal done, started
        while time.perf_counter() < end:
            await asyncio.to_thread(noop)
            if started is None and time.perf_counter() > end - seconds:
                started = (time.perf_counter(), done)
            done += 1
    await asyncio.gather(*(slot() for _ in range(concurrency)))
    print((done - started[1]) / (time.perf_counter() - started[0]))
asyncio.run(main({concurrency}, {seconds}))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tasks_ok(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "loopwatch_tasks_total" and s.labels.get("outcome") == "ok"
    )


def loopwatch_rate(concurrency: int, seconds: float) -> float:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "c.toml")
        config.write_text(
            f'[metrics]\nport = {port}\n[logging]\nformat = "json"\nlevel = "warning"\n'
            "[executors.thread]\nmax_workers = 4\n"
            '[[workers]]\nname = "noop"\ntarget = "loopwatch.targets:noop"\nstrategy = "thread"\n'
            f"concurrency = {concurrency}\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "loopwatch.daemon", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    tasks_ok(port)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            time.sleep(2.0)  # warm-up
            before, t0 = tasks_ok(port), time.perf_counter()
            time.sleep(seconds)
            after, t1 = tasks_ok(port), time.perf_counter()
        finally:
            proc.terminate()
            proc.wait(20)
    return (after - before) / (t1 - t0)


def bare_rate(concurrency: int, seconds: float) -> float:
    code = BARE.format(switch=SWITCH_INTERVAL, concurrency=concurrency, seconds=seconds, warmup=2.0)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for concurrency in (1, 100):
        ours, bare = [], []
        for _ in range(args.runs):  # interleaved: drift on a shared host hits both alike
            ours.append(loopwatch_rate(concurrency, args.seconds))
            bare.append(bare_rate(concurrency, args.seconds))
        rows.append(
            {
                "concurrency": concurrency,
                "loopwatch_calls_per_s": ours,
                "to_thread_calls_per_s": bare,
                "loopwatch_us_per_call": 1e6 / median(ours),
                "to_thread_us_per_call": 1e6 / median(bare),
            }
        )
    (ROOT / "benchmarks/results/per_call.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("| calls in flight | loopwatch daemon, µs/call | asyncio.to_thread, µs/call | ratio |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        ratio = r["loopwatch_us_per_call"] / r["to_thread_us_per_call"]
        print(
            f"| {r['concurrency']} | {r['loopwatch_us_per_call']:.1f} | "
            f"{r['to_thread_us_per_call']:.1f} | {ratio:.2f}x |"
        )


if __name__ == "__main__":
    main()
