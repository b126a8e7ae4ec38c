"""The offload race: loopwatch's run_sync and thread worker against asyncio, anyio and uvloop.

Library methods, each in a fresh interpreter (benchmarks/offload_cell.py): no-op calls and
50 µs calls that let go of the GIL, 1 and 100 in flight, 4 threads, 1 ms switch interval;
process pools (2 forkserver children) for the process strategy against
``run_in_executor(ProcessPoolExecutor)``. The daemon, as a user sees it: ``loopwatch run``
with one no-op worker on ``thread`` (4 threads), counted from its endpoint, against a
bare ``asyncio.to_thread`` loop (benchmarks/per_call.py). Runs are interleaved, ``--runs``
rounds of every cell; the table gives the best and the median.

Usage: python benchmarks/offload.py [--seconds 2] [--runs 3]
Writes benchmarks/results/offload.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path
from statistics import median

from per_call import bare_rate, loopwatch_rate

ROOT = Path(__file__).resolve().parent.parent
CELL = ROOT / "benchmarks" / "offload_cell.py"
THREAD_METHODS = (
    "asyncio.to_thread",
    "run_in_executor",
    "anyio",
    "uvloop run_in_executor",
    "loopwatch.run_sync",
    "uvloop loopwatch.run_sync",
)
PROCESS_METHODS = ("run_in_executor(ProcessPoolExecutor)", "loopwatch process")
CELL_NAME = {"asyncio.to_thread": "to_thread"}


def cell(method: str, in_flight: int, work: str, seconds: float) -> float:
    out = subprocess.run(
        [sys.executable, str(CELL), CELL_NAME.get(method, method), str(in_flight), work, str(seconds)],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--table", action="store_true", help="print the table of the last results")
    args = parser.parse_args()
    out = ROOT / "benchmarks/results/offload.json"
    if args.table:
        print(table(json.loads(out.read_text())["rows"]))
        return
    plan = [
        (method, in_flight, work)
        for work in ("noop", "50us")
        for in_flight in (1, 100)
        for method in THREAD_METHODS
    ] + [(method, in_flight, "noop") for in_flight in (1, 100) for method in PROCESS_METHODS]
    library: dict[str, list[float]] = {}
    daemon: dict[str, list[float]] = {}
    for run in range(args.runs):  # interleaved: drift on a shared host hits every cell alike
        for method, in_flight, work in plan:
            key = f"{method}|{in_flight}|{work}"
            library.setdefault(key, []).append(cell(method, in_flight, work, args.seconds))
        for in_flight in (1, 100):
            daemon.setdefault(f"loopwatch daemon thread worker|{in_flight}", []).append(
                loopwatch_rate(in_flight, args.seconds + 1)
            )
            daemon.setdefault(f"bare asyncio.to_thread loop|{in_flight}", []).append(
                bare_rate(in_flight, args.seconds + 1)
            )
        print(f"round {run + 1} of {args.runs} done", file=sys.stderr)
    rows = []
    for source in (library, daemon):
        for key, rates in source.items():
            method, in_flight, *work = key.split("|")
            rows.append(
                {
                    "method": method,
                    "in_flight": int(in_flight),
                    "work": work[0] if work else "noop",
                    "calls_per_s": rates,
                    "best": max(rates),
                    "median": median(rates),
                }
            )
    result = {
        "machine": {
            "cpus": __import__("os").cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {"threads": 4, "processes": 2, "switch_interval": 0.001},
        "seconds": args.seconds,
        "runs": args.runs,
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))


def table(rows: list[dict[str, object]]) -> str:
    """Markdown: calls/s (best, median) and the ratio of medians to the baseline of each group."""
    lines = [
        "| work | in flight | method | calls/s best | calls/s median | x baseline (medians) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    baselines = {
        (r["work"], r["in_flight"], _group(str(r["method"]))): r["median"]
        for r in rows
        if r["method"]
        in (
            "asyncio.to_thread",
            "run_in_executor(ProcessPoolExecutor)",
            "bare asyncio.to_thread loop",
        )
    }
    for r in rows:
        base = baselines[(r["work"], r["in_flight"], _group(str(r["method"])))]
        ratio = float(r["median"]) / float(base)  # type: ignore[arg-type]
        lines.append(
            f"| {r['work']} | {r['in_flight']} | {r['method']} | {r['best']:,.0f} | "
            f"{r['median']:,.0f} | {ratio:.2f} |"
        )
    return "\n".join(lines)


def _group(method: str) -> str:
    if "Process" in method or "process" in method:
        return "process"
    if "daemon" in method or method.endswith(" loop"):
        return "daemon"
    return "thread"


if __name__ == "__main__":
    main()
