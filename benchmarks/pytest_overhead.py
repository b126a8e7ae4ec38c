"""What ``--loopwatch`` costs a suite: 400 trivial async tests, with and without it.

Interleaved runs of each in fresh pytest processes: the median wall time of the whole run
and the median CPU time (user + system) of the pytest process, which a busy VM disturbs
less than the wall clock.
Usage: python benchmarks/pytest_overhead.py [--tests 400] [--runs 7]
Writes benchmarks/results/pytest_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# As a user's machine runs it: bytecode cached (this VM's shell sets PYTHONDONTWRITEBYTECODE,
# which makes every run compile every module again, loopwatch's and pytest's).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
asyncio_default_test_loop_scope = function
"""


def suite(where: Path, tests: int) -> None:
    body = "import asyncio\n\n" + "".join(
        f"async def test_{i}():\n    await asyncio.sleep(0)\n    assert {i} >= 0\n\n"
        for i in range(tests)
    )
    (where / "test_trivial.py").write_text(body)
    (where / "pytest.ini").write_text(INI)


def run(where: Path, *args: str) -> tuple[float, float]:
    """Wall and CPU seconds of one pytest run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=where, check=True, capture_output=True, timeout=600, env=ENV,
    )  # fmt: skip
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tests", type=int, default=400)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    plain: list[tuple[float, float]] = []
    watched: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        suite(where, args.tests)
        run(where)  # warm: bytecode, the page cache
        for _ in range(args.runs):
            plain.append(run(where))
            watched.append(run(where, "--loopwatch"))
    wall = [statistics.median(r[0] for r in runs) for runs in (plain, watched)]
    cpu = [statistics.median(r[1] for r in runs) for runs in (plain, watched)]
    result = {
        "tests": args.tests,
        "runs": args.runs,
        "plain_wall_s": [r[0] for r in plain],
        "loopwatch_wall_s": [r[0] for r in watched],
        "plain_cpu_s": [r[1] for r in plain],
        "loopwatch_cpu_s": [r[1] for r in watched],
        "ratio_wall_median": wall[1] / wall[0],
        "ratio_cpu_median": cpu[1] / cpu[0],
        "per_test_ms_wall": (wall[1] - wall[0]) / args.tests * 1000,
    }
    (ROOT / "benchmarks/results/pytest_overhead.json").write_text(
        json.dumps(result, indent=2) + "\n"
    )
    print(
        f"{args.tests} trivial async tests, median of {args.runs}: {wall[0]:.2f} s plain, "
        f"{wall[1]:.2f} s with --loopwatch: {wall[1] / wall[0]:.3f}x wall, "
        f"{cpu[1] / cpu[0]:.3f}x CPU ({cpu[0]:.2f} -> {cpu[1]:.2f} s), "
        f"{result['per_test_ms_wall']:.2f} ms per test"
    )


if __name__ == "__main__":
    main()
