"""The ``loopwatch bench`` command: progress bar, table, bench.json, bench.png."""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from loopwatch import targets
from loopwatch.daemon import __version__
from loopwatch.daemon.bench.cell import CellSpec
from loopwatch.daemon.bench.chart import write_chart
from loopwatch.daemon.bench.matrix import WORKLOADS, cells, median_row, recommend, run_cell
from loopwatch.daemon.errors import ConfigError, TargetError


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import os  # noqa: PLC0415

    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)),
        "processor": platform.processor() or platform.machine(),
        "loopwatch": __version__,
    }


def run_bench(args: argparse.Namespace) -> None:
    """Run the matrix (or the user's target), print the table, write the files."""
    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, width=120)  # a log file gets the whole table
    quick: bool = args.quick
    seconds = args.seconds or (3.0 if quick else 6.0)
    repeats = 1 if quick else 3
    workloads = WORKLOADS
    if args.target:
        try:
            kwargs = json.loads(args.kwargs)
            targets.resolve(args.target)
        except (TargetError, json.JSONDecodeError) as exc:
            raise ConfigError(f"bench --target {args.target}: {exc}") from None
        workloads = {"target": (args.target, kwargs, kwargs)}
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # Said before the minutes of measuring: the default is a folder in the current one.
    console.print(f"results go to {out} (--out DIR to choose)", markup=False)
    rows = (
        []
        if args.overhead
        else _run_matrix(
            console, list(cells(quick=quick, seconds=seconds, workloads=workloads)), repeats
        )
    )
    overhead = [] if args.target else _run_overhead(console, quick=quick)
    report = {"machine": machine(), "quick": quick, "seconds_per_cell": seconds, "repeats": repeats}
    (out / "bench.json").write_text(
        json.dumps([{k: v for k, v in r.items() if k != "samples"} for r in rows], indent=2) + "\n"
    )
    (out / "overhead.json").write_text(json.dumps(overhead, indent=2) + "\n")
    (out / "machine.json").write_text(json.dumps(report, indent=2) + "\n")
    chart = importlib.util.find_spec("matplotlib") is not None
    if rows:
        if chart:
            write_chart(rows, out / "bench.png")
        else:
            # markup=False: rich would take "[bench]" for a style and drop it.
            console.print(
                'no chart: matplotlib is missing (pip install "loopwatch[bench]")', markup=False
            )
        console.print(_matrix_table(rows))
    if overhead:
        console.print(_overhead_table(overhead))
    for workload in dict.fromkeys(r["workload"] for r in rows):
        strategy, reason = recommend([r for r in rows if r["workload"] == workload])
        console.print(f"[bold]{workload}[/]: use [bold]{strategy}[/] — {reason}")
    console.print(f"wrote {out / 'bench.json'}" + (f", {out / 'bench.png'}" if chart else ""))


def _run_matrix(console: Console, specs: list[CellSpec], repeats: int) -> list[dict[str, Any]]:
    rows = []
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console,
    ) as progress:  # fmt: skip
        task = progress.add_task("bench", total=len(specs) * repeats)
        for spec in specs:
            runs = []
            for i in range(repeats):
                progress.update(
                    task, description=f"{spec.workload:>6} on {spec.strategy:<24} run {i + 1}"
                )
                runs.append(run_cell(spec))
                progress.advance(task)
            rows.append(median_row(runs))
    return rows


def _run_overhead(console: Console, *, quick: bool) -> list[dict[str, Any]]:
    calls, rounds = (200, 3) if quick else (1000, 5)
    rows: list[dict[str, Any]] = []
    with console.status("offload overhead: no-op and a 5 MB payload"):
        for payload_mb in (0, 5):
            n = calls if payload_mb == 0 else calls // 10
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "loopwatch.daemon.bench.overhead",
                    str(payload_mb),
                    str(n),
                    str(rounds),
                ],
                capture_output=True,
                text=True,
                timeout=900,
                check=True,
            )
            rows.extend(json.loads(result.stdout.strip().splitlines()[-1]))
    return rows


def _matrix_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="strategy x workload (medians; lag in ms)")
    for column in (
        "workload",
        "strategy",
        "calls/s",
        "lag p50",
        "lag p99",
        "lag max",
        "tick drift max",
    ):
        table.add_column(
            column, justify="left" if column in ("workload", "strategy") else "right", no_wrap=True
        )
    for r in rows:
        table.add_row(
            r["workload"],
            r["strategy"],
            f"{r['tasks_per_s']:.2f}",
            *(f"{r[k] * 1000:.1f}" for k in ("lag_p50", "lag_p99", "lag_max", "tick_drift_max")),
        )
    return table


def _overhead_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="offload overhead per call (µs, medians)")
    for column in ("payload", "method", "sequential", "100 concurrent"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["payload"], r["method"], f"{r['sequential_us']:.1f}", f"{r['concurrent_us']:.1f}"
        )
    return table
