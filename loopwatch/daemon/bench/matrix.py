"""The strategy x workload matrix, and the recommendation drawn from its rows."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from statistics import median
from typing import Any

from loopwatch import targets
from loopwatch.daemon.bench.cell import CellSpec

# The tutorial's experiments: a blocking client, its CPU countdown, and "walk every key
# of a multi-MB JSON".
WORKLOADS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # name: (target, kwargs, quick kwargs)
    "io": ("loopwatch.daemon.workloads:blocking_io", {"seconds": 0.2}, {"seconds": 0.2}),
    "cpu": ("loopwatch.daemon.workloads:countdown", {"n": 10_000_000}, {"n": 3_000_000}),
    "json": ("loopwatch.daemon.workloads:json_walk", {"size_mb": 5}, {"size_mb": 2}),
}
# (row name, strategy, executor settings). Cooperative twice: our time slice, and the
# tutorial's fixed count (1000 safe points = its 1M iterations of countdown).
# Threads twice: at loopwatch's GIL switch interval (1 ms) and at Python's default (5 ms),
# the setting the tutorial's "threads hurt CPU-bound work" was seen with.
STRATEGIES: list[tuple[str, str, dict[str, Any]]] = [
    ("blocking", "blocking", {}),
    ("thread", "thread", {"thread": {"max_workers": 4}}),
    ("thread-switch_5ms", "thread", {"thread": {"max_workers": 4}}),
    ("process", "process", {"process": {"max_workers": 2, "start_method": "forkserver"}}),
    ("cooperative-slice", "cooperative", {"cooperative": {"slice": 0.005}}),
    ("cooperative-yield_every", "cooperative", {"cooperative": {"yield_every": 1000}}),
    # Runs on a thread, measured as "auto" measures a worker, and never moves: its row
    # carries the rule's choice (loopwatch.choice), the one the bench recommends.
    ("auto", "auto", {"auto": {"mode": "advise", "window": 3600.0}}),
]
# Lag p99 a service can live with: above it, timers and other requests visibly suffer.
ACCEPTABLE_LAG_P99_S = 0.010
_PREFERENCE = {
    "thread": 0,
    "cooperative-slice": 1,
    "process": 2,
    "thread-switch_5ms": 3,
    "cooperative-yield_every": 4,
}
METRICS = ("tasks_per_s", "lag_p50", "lag_p99", "lag_max", "tick_drift_max")


def cells(
    *,
    quick: bool,
    seconds: float,
    workloads: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] | None = None,
) -> Iterator[CellSpec]:
    """Every (workload, strategy) cell; cooperative only for generator targets."""
    for workload, (target, kwargs, quick_kwargs) in (workloads or WORKLOADS).items():
        generator = targets.is_generator(targets.resolve(target))
        for row_name, strategy, executors in STRATEGIES:
            if strategy == "cooperative" and not generator:
                continue
            yield CellSpec(
                workload=workload,
                strategy=row_name,
                target=target,
                kwargs=quick_kwargs if quick else kwargs,
                seconds=seconds,
                concurrency=2 if strategy in ("thread", "process", "auto") else 1,
                variant=json.dumps(executors.get(strategy, {}), sort_keys=True),
                executors=executors,
                switch_interval=0.005 if row_name == "thread-switch_5ms" else 0.001,
            )


def run_cell(spec: CellSpec, timeout_s: float = 600.0) -> dict[str, Any]:
    """Run one cell in a fresh interpreter; returns its row."""
    result = subprocess.run(
        [sys.executable, "-m", "loopwatch.daemon.bench.cell", json.dumps(asdict(spec))],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"bench cell {spec.workload}/{spec.strategy} failed:\n{result.stderr}")
    row: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return row


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from several runs of a cell: the median of every measure."""
    row = dict(runs[0])
    for key in (*METRICS, "tasks", "seconds"):
        row[key] = median(r[key] for r in runs)
    row["runs"] = len(runs)
    row["samples"] = [s for r in runs for s in r["samples"]]
    fits = Counter(r["fit"] for r in runs if r.get("fit"))
    if fits:
        # The choice most runs made, with the reason one of them gave.
        row["fit"] = fits.most_common(1)[0][0]
        row["fit_reason"] = next(r["fit_reason"] for r in runs if r.get("fit") == row["fit"])
    return row


def recommend(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """The strategy to use for one workload's rows, and why (the evidence, in numbers).

    The rule ``auto`` follows decides (one model of "which strategy fits"), from what
    the "auto" row measured; the other rows are there to check it against. Without an
    "auto" row, the rows alone decide.
    """
    fits = [r for r in rows if r.get("fit")]
    if fits:
        fitted = fits[0]
        chosen = next((r for r in rows if r["strategy"] == fitted["fit"]), None)
        measured = (
            f" (measured here: lag p99 {_ms(chosen['lag_p99'])}, "
            f"{chosen['tasks_per_s']:.1f} calls/s)"
            if chosen is not None
            else ""
        )
        return fitted["fit"], f"{fitted['fit_reason']}{measured}"
    by_name = {r["strategy"]: r for r in rows}
    fine = [r for r in rows if r["lag_p99"] <= ACCEPTABLE_LAG_P99_S and r["strategy"] != "blocking"]
    if not fine:
        best = min(rows, key=lambda r: r["lag_p99"])
        return best["strategy"], (
            f"no strategy kept lag p99 under {ACCEPTABLE_LAG_P99_S * 1000:.0f} ms; "
            f"{best['strategy']} came closest ({_ms(best['lag_p99'])})"
        )
    # Within 5% of the best throughput, prefer the simplest strategy that is fine.
    top = max(r["tasks_per_s"] for r in fine)
    close = [r for r in fine if r["tasks_per_s"] >= 0.95 * top]
    best = min(close, key=lambda r: _PREFERENCE.get(r["strategy"], len(_PREFERENCE)))
    thread = by_name.get("thread")
    if (
        best["strategy"] != "thread"
        and thread is not None
        and thread["lag_p99"] > ACCEPTABLE_LAG_P99_S
    ):
        return best["strategy"], (
            f"CPU-bound: thread raises lag p99 to {_ms(thread['lag_p99'])} (it holds the GIL); "
            f"use {best['strategy']} (lag p99 {_ms(best['lag_p99'])}, "
            f"{best['tasks_per_s']:.1f} calls/s)"
        )
    if best["strategy"] == "thread":
        return "thread", (
            f"I/O-bound: thread keeps lag p99 at {_ms(best['lag_p99'])} "
            f"with {best['tasks_per_s']:.1f} calls/s; a process only adds pickling"
        )
    return best["strategy"], (
        f"{best['strategy']} keeps lag p99 at {_ms(best['lag_p99'])} with the best throughput "
        f"({best['tasks_per_s']:.1f} calls/s)"
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"
