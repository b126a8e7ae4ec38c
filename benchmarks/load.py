"""Load and soak: many workers on a real daemon, its endpoint scraped every 100 ms.

Usage:
  python benchmarks/load.py --workers 300 --threads 64 --seconds 20 --runs 3   # issue 3
  python benchmarks/load.py --workers 300 --threads 64 --seconds 600 --soak    # issue 9

Measures calls/s (from loopwatch_tasks_total), loop lag p99 (from the histogram),
scrape latency, and in soak mode RSS, threads and fds every 10 s.
Writes benchmarks/results/load[-soak].json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from statistics import median
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from loopwatch.daemon.top import quantile

ROOT = Path(__file__).resolve().parent.parent
IO_SECONDS = 0.05


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config(workers: int, threads: int, port: int) -> str:
    text = f'[metrics]\nport = {port}\n[logging]\nformat = "json"\nlevel = "warning"\n'
    text += f"[executors.thread]\nmax_workers = {threads}\n"
    for i in range(workers):
        text += (
            f'[[workers]]\nname = "io-{i}"\ntarget = "loopwatch.daemon.workloads:blocking_io"\n'
            f'kwargs = {{ seconds = {IO_SECONDS}, step = {IO_SECONDS} }}\nstrategy = "thread"\n'
        )
    return text


def scrape(url: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    elapsed = time.perf_counter() - started
    tasks = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "loopwatch_tasks_total" and s.labels.get("outcome") == "ok":
                tasks += s.value
            elif s.name == "loopwatch_event_loop_lag_seconds_bucket":
                buckets[float(s.labels["le"])] = s.value
    return elapsed, {"tasks": tasks, "buckets": buckets}


def quantile_from_buckets(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The ``q`` quantile of the observations between two scrapes (``loopwatch top``'s arithmetic)."""
    found = quantile(((edge, count - before.get(edge, 0.0)) for edge, count in after.items()), q)
    return 0.0 if found is None else found


def proc_stats(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    threads = next(
        int(line.split()[1]) for line in status.splitlines() if line.startswith("Threads")
    )
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return {"rss_mb": rss_kb / 1024, "threads": threads, "fds": fds}


def run(
    workers: int, threads: int, seconds: float, *, soak: bool, warmup: float = 5.0
) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "load.toml")
        path.write_text(config(workers, threads, port))
        proc = subprocess.Popen(
            [sys.executable, "-m", "loopwatch.daemon", "run", "-c", str(path)], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        log_lines: list[str] = []
        reader = threading.Thread(target=lambda: log_lines.extend(proc.stdout or []), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    scrape(url)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            time.sleep(warmup)
            _, first = scrape(url)
            t0 = time.monotonic()
            scrape_times: list[float] = []
            samples: list[dict[str, float]] = [proc_stats(proc.pid)]
            next_stats = t0 + 10
            while time.monotonic() - t0 < seconds:
                elapsed, last = scrape(url)
                scrape_times.append(elapsed)
                if soak and time.monotonic() >= next_stats:
                    samples.append(proc_stats(proc.pid) | {"t": time.monotonic() - t0})
                    next_stats += 10
                time.sleep(max(0.0, 0.1 - elapsed))
            t1 = time.monotonic()
            samples.append(proc_stats(proc.pid) | {"t": t1 - t0})
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    ordered = sorted(scrape_times)
    row: dict[str, Any] = {
        "workers": workers,
        "threads": threads,
        "seconds": round(t1 - t0, 1),
        "calls_per_s": round((last["tasks"] - first["tasks"]) / (t1 - t0), 1),
        "ideal_calls_per_s": threads / IO_SECONDS,
        "lag_p99": quantile_from_buckets(first["buckets"], last["buckets"], 0.99),
        "lag_p50": quantile_from_buckets(first["buckets"], last["buckets"], 0.5),
        "scrape_p50": ordered[len(ordered) // 2],
        "scrape_p99": ordered[int(0.99 * (len(ordered) - 1))],
        "scrape_max": ordered[-1],
        "scrapes": len(ordered),
        "stalls_logged": sum('"event": "stall"' in line for line in log_lines),
    }
    if soak:
        row["stats"] = samples
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=300)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--soak", action="store_true")
    args = parser.parse_args()
    runs = [
        run(args.workers, args.threads, args.seconds, soak=args.soak)
        for _ in range(1 if args.soak else args.runs)
    ]
    keys = ("calls_per_s", "lag_p50", "lag_p99", "scrape_p50", "scrape_p99", "scrape_max")
    summary = {k: median(r[k] for r in runs) for k in keys}
    name = "load-soak.json" if args.soak else "load.json"
    (ROOT / "benchmarks/results" / name).write_text(
        json.dumps({"median": summary, "runs": runs}, indent=2) + "\n"
    )
    ideal = args.threads / IO_SECONDS
    print(
        f"| workers | threads | calls/s (median) | of ideal {ideal:.0f} | lag p50 | lag p99 | scrape p50 | scrape p99 | scrape max |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {args.workers} | {args.threads} | {summary['calls_per_s']:.0f} | {summary['calls_per_s'] / ideal:.0%} "
        f"| {summary['lag_p50'] * 1000:.1f} ms | {summary['lag_p99'] * 1000:.1f} ms | {summary['scrape_p50'] * 1000:.1f} ms "
        f"| {summary['scrape_p99'] * 1000:.1f} ms | {summary['scrape_max'] * 1000:.1f} ms |"
    )
    if args.soak:
        stats = runs[0]["stats"]
        warm = stats[1] if len(stats) > 1 else stats[0]
        end = stats[-1]
        print(
            f"\nRSS after warm-up {warm['rss_mb']:.1f} MB -> end {end['rss_mb']:.1f} MB "
            f"({(end['rss_mb'] / warm['rss_mb'] - 1):+.1%}); threads {warm['threads']} -> {end['threads']}; "
            f"fds {warm['fds']} -> {end['fds']}; stalls logged {runs[0]['stalls_logged']}"
        )


if __name__ == "__main__":
    main()
