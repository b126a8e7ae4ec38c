"""What ``--loopwatch`` costs a suite: 400 trivial async tests, with and without it.

Best of 3 interleaved runs of each, in fresh pytest processes, wall time of the whole run.
Usage: python benchmarks/pytest_overhead.py [--tests 400] [--runs 3]
Writes benchmarks/results/pytest_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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


def run(where: Path, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=where, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tests", type=int, default=400)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    plain: list[float] = []
    watched: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        suite(where, args.tests)
        run(where)  # warm: bytecode, the page cache
        for _ in range(args.runs):
            plain.append(run(where))
            watched.append(run(where, "--loopwatch"))
    ratio = min(watched) / min(plain)
    result = {
        "tests": args.tests,
        "runs": args.runs,
        "plain_s": plain,
        "loopwatch_s": watched,
        "ratio_best": ratio,
        "per_test_ms": (min(watched) - min(plain)) / args.tests * 1000,
    }
    (ROOT / "benchmarks/results/pytest_overhead.json").write_text(
        json.dumps(result, indent=2) + "\n"
    )
    print(
        f"{args.tests} trivial async tests: {min(plain):.2f} s plain, {min(watched):.2f} s with "
        f"--loopwatch (best of {args.runs}): {ratio:.3f}x, {result['per_test_ms']:.2f} ms per test"
    )


if __name__ == "__main__":
    main()
