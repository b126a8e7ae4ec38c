"""The bench machinery on a tiny matrix: rows, schema, chart, recommendation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loopwatch.daemon.bench import overhead
from loopwatch.daemon.bench.matrix import cells, recommend, run_cell
from tests.daemon_process import ROOT
from tests.helpers import run_loopwatch

ROW_KEYS = {
    "workload",
    "strategy",
    "tasks_per_s",
    "lag_p50",
    "lag_p99",
    "lag_max",
    "tick_drift_max",
}


# Every strategy a bench row is measured on (cooperative both ways, thread at two intervals).
CELL_STRATEGIES = (
    "blocking",
    "thread",
    "thread-switch_5ms",
    "process",
    "cooperative-slice",
    "cooperative-yield_every",
    "auto",
)


def test_matrix_covers_every_workload_on_every_strategy() -> None:
    """io, cpu and json on blocking, thread, process and both cooperative variants."""
    specs = list(cells(quick=True, seconds=1.0))
    assert {(s.workload, s.strategy) for s in specs} == {
        (w, s) for w in ("io", "cpu", "json") for s in CELL_STRATEGIES
    }


@pytest.mark.integration
def test_tiny_cells_measure_what_the_tutorial_claims() -> None:
    """Blocking a CPU loop lags the loop; the process pool does not."""
    tiny = {"cpu": ("loopwatch.daemon.workloads:countdown", {"n": 300_000}, {"n": 300_000})}
    rows = {s.strategy: run_cell(s) for s in cells(quick=True, seconds=0.5, workloads=tiny)}
    assert set(rows) == set(CELL_STRATEGIES)
    for row in rows.values():
        assert set(row) >= ROW_KEYS
        assert row["tasks_per_s"] > 0
        assert 0 <= row["lag_p50"] <= row["lag_p99"] <= row["lag_max"]
    assert rows["blocking"]["lag_max"] > rows["process"]["lag_p99"]


def bench_target(
    tmp_path: Path, target: str, kwargs: str, seconds: str
) -> tuple[list[dict[str, Any]], str]:
    """``loopwatch bench --quick --target``: its rows, and what it said on one line."""
    result = run_loopwatch(
        "bench", "--quick", "--seconds", seconds, "--target", target, "--kwargs", kwargs,
        "--out", str(tmp_path), timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads((tmp_path / "bench.json").read_text())
    return rows, " ".join(result.stderr.split())  # the console wraps long lines


@pytest.mark.integration
def test_cli_benchmarks_a_user_target_and_writes_json_and_chart(tmp_path: Path) -> None:
    """``--target`` runs the applicable strategies, recommends one, writes the files."""
    rows, said = bench_target(
        tmp_path, "loopwatch.daemon.workloads:countdown", '{"n": 200000}', "0.4"
    )
    assert len(rows) == 7
    assert all(set(r) >= ROW_KEYS for r in rows)
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    # The recommendation is auto's rule on what the "auto" row measured.
    [auto] = [r for r in rows if r["strategy"] == "auto"]
    assert auto["fit"] == "process"
    assert "target: use process" in said
    assert "held the GIL" in said
    machine = json.loads((tmp_path / "machine.json").read_text())
    assert machine["machine"]["cpus"] >= 1


@pytest.mark.integration
def test_bench_and_auto_agree_that_native_code_releasing_the_gil_stays_on_threads(
    tmp_path: Path,
) -> None:
    """hashlib uses the CPU but not the GIL: the bench says thread, as auto does (test_auto)."""
    rows, said = bench_target(tmp_path, "tests.targets:hash_buffer", '{"mb": 8}', "0.6")
    [auto] = [r for r in rows if r["strategy"] == "auto"]
    assert auto["fit"] == "thread", auto["fit_reason"]
    assert "target: use thread" in said
    assert "lets go of it" in said


@pytest.mark.integration
def test_cli_rejects_a_bad_target(tmp_path: Path) -> None:
    """An unresolvable target is a clear error, exit 78."""
    result = run_loopwatch("bench", "--target", "nowhere:fn", "--out", str(tmp_path))
    assert result.returncode == 78
    assert 'cannot import module "nowhere"' in result.stderr


async def test_overhead_measures_every_method() -> None:
    """Every method of the side-by-side comparison runs and yields a time."""
    rows = await overhead.measure(0.05, 100, 1)
    assert [r["method"] for r in rows] == [
        "loopwatch thread", "asyncio.to_thread", "loop.run_in_executor(thread)",
        "anyio.to_thread.run_sync", "asgiref sync_to_async", "loopwatch process",
        "loop.run_in_executor(process)",
    ]  # fmt: skip
    assert all(r["sequential_us"] > 0 and r["concurrent_us"] > 0 for r in rows)


def row(strategy: str, calls: float, p99_ms: float) -> dict[str, object]:
    return {"strategy": strategy, "tasks_per_s": calls, "lag_p99": p99_ms / 1000}


@pytest.mark.parametrize(
    ("rows", "expected", "reason_part"),
    [
        (
            [
                row("blocking", 10, 400),
                row("thread", 9, 40),
                row("process", 20, 1),
                row("cooperative-slice", 9, 6),
            ],
            "process",
            "CPU-bound: thread raises lag p99 to 40.0 ms",
        ),
        (
            [row("blocking", 5, 390), row("thread", 9.3, 1.3), row("process", 9.32, 0.9)],
            "thread",
            "I/O-bound: thread keeps lag p99 at 1.3 ms",
        ),
        (
            [row("blocking", 5, 390), row("thread", 9, 50), row("process", 8, 30)],
            "process",
            "no strategy kept lag p99 under 10 ms",
        ),
        (
            [row("thread", 9, 40), row("cooperative-slice", 12, 5), row("process", 11.9, 2)],
            "cooperative-slice",
            "thread raises lag p99 to 40.0 ms",
        ),
    ],
)
def test_recommendation_on_synthetic_measurements(
    rows: list[dict[str, object]], expected: str, reason_part: str
) -> None:
    """The recommendation picks from evidence and says why, in numbers."""
    strategy, reason = recommend(rows)
    assert strategy == expected
    assert reason_part in reason


@pytest.mark.integration
def test_cli_without_matplotlib_skips_the_chart_and_names_the_extra(tmp_path: Path) -> None:
    """A plain install has no matplotlib: one line naming ``loopwatch[bench]``, no traceback."""
    no_matplotlib = "import sys; sys.modules['matplotlib'] = None; from loopwatch.daemon.cli import main; main()"
    result = subprocess.run(
        [
            sys.executable, "-c", no_matplotlib, "bench", "--quick", "--seconds", "0.3",
            "--target", "loopwatch.daemon.workloads:countdown", "--kwargs", '{"n": 1000}', "--out", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert 'no chart: matplotlib is missing (pip install "loopwatch[bench]")' in result.stderr
    assert "Traceback" not in result.stderr
    # Where the files go is said first, as an absolute path.
    assert " ".join(result.stderr.split()).startswith(f"results go to {tmp_path.resolve()} (--out")
    assert not (tmp_path / "bench.png").exists()
    assert (tmp_path / "bench.json").exists()
