"""Idle soak: a real daemon with no workers for N minutes; stalls must stay at zero.

Usage: python benchmarks/idle_soak.py [--seconds 600]
Counts from the daemon's own endpoint: stalls, blocked seconds, lag quantiles, CPU.
Writes benchmarks/results/idle_soak.json and prints a markdown table.
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

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def bucket_quantile(samples: dict, q: float) -> float:
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (name, labels), v in samples.items()
        if name == "loopwatch_event_loop_lag_seconds_bucket"
    )
    total = buckets[-1][1]
    return next(bound for bound, count in buckets if count >= q * total)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=600.0)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "idle.toml")
        config.write_text(f'[metrics]\nport = {port}\n[logging]\nformat = "json"\n')
        log = Path(tmp, "log")
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "loopwatch.daemon", "run", "-c", str(config)],
                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )  # fmt: skip
            try:
                time.sleep(3)
                start = scrape(port)
                time.sleep(args.seconds)
                end = scrape(port)
            finally:
                proc.terminate()
                proc.wait(20)
        stall_lines = [line for line in log.read_text().splitlines() if '"stall"' in line]
    cpu = end[("process_cpu_seconds_total", ())] - start[("process_cpu_seconds_total", ())]
    result = {
        "seconds": args.seconds,
        "stalls": end[("loopwatch_event_loop_stalls_total", ())]
        - start[("loopwatch_event_loop_stalls_total", ())],
        "stall_lines": stall_lines,
        "blocked_seconds": sum(
            v
            for (name, _), v in end.items()
            if name == "loopwatch_event_loop_blocked_seconds_total"
        ),
        "lag_samples": end[("loopwatch_event_loop_lag_seconds_count", ())]
        - start[("loopwatch_event_loop_lag_seconds_count", ())],
        "lag_p99_bucket": bucket_quantile(end, 0.99),
        "cpu_share": cpu / args.seconds,
    }
    (ROOT / "benchmarks/results/idle_soak.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| duration | {args.seconds:.0f} s |")
    print(f"| stalls | {result['stalls']:.0f} |")
    print(f"| lag samples | {result['lag_samples']:.0f} |")
    print(f"| lag p99 (bucket bound) | {result['lag_p99_bucket'] * 1000:g} ms |")
    print(f"| CPU share of one core | {result['cpu_share'] * 100:.2f}% |")


if __name__ == "__main__":
    main()
