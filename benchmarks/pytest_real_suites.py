"""``pytest --loopwatch`` on eight public projects' own test suites, as a new user runs it.

Each project is downloaded as its sdist at a pinned version, unpacked, and installed from
there in editable mode (as its developers run it) with its test dependencies, into one venv
(benchmarks/.suites-venv) beside this checkout of loopwatch; its tests run from the unpacked
sdist, plain and with ``--loopwatch``, interleaved, ``--runs`` times.
Per suite it records: crashes (an exit code of 2-4, INTERNALERROR), the tests that pass
plain and fail with the plugin, and whether each of those carries a loopwatch verdict
(its report names it), the verdicts, the warnings, the tests not watched, and the wall
time of both runs (the pytest process, as the user waits for it).

Usage: python benchmarks/pytest_real_suites.py [--runs 3] [--only NAME ...]
Writes benchmarks/results/pytest_real_suites.json and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".suites"
VENV = ROOT / "benchmarks" / ".suites-venv"
RESULTS = ROOT / "benchmarks" / "results" / "pytest_real_suites.json"
RUNNER = [
    "pytest==9.2.0",
    "pytest-asyncio==1.5.0",
    "pytest-timeout==2.4.0",
    "pytest-xdist==3.8.0",
    "pytest-mock==3.15.1",
]
# Writes each test's outcome (nodeid -> passed/failed/skipped/error) to $OUTCOMES.
OUTCOMES_PLUGIN = """
import json, os

_outcomes = {}

def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        key = report.nodeid
        if report.when != "call" and report.outcome == "failed":
            _outcomes[key] = "error"
        elif report.when == "call" or key not in _outcomes:
            _outcomes[key] = report.outcome

def pytest_sessionfinish(session):
    path = os.environ.get("OUTCOMES")
    if path and not hasattr(session.config, "workerinput"):
        with open(path, "w") as f:
            json.dump(_outcomes, f)
"""


@dataclass
class Suite:
    name: str
    package: str  # name==version, installed from its sdist
    deps: list[str]
    tests: list[str]  # relative to the unpacked sdist
    args: list[str] = field(default_factory=list)
    # The documented allow line for a suite whose tests do file I/O in their own bodies.
    allow: str = ""


SUITES = [
    Suite(
        "anyio",
        "anyio==4.16.0",
        [
            "trio",
            "uvloop",
            "trustme",
            "truststore",
            "hypothesis",
            "psutil",
            "blockbuster==1.5.29",
            "exceptiongroup",
        ],
        [
            "tests/test_taskgroups.py",
            "tests/test_synchronization.py",
            "tests/test_to_thread.py",
            "tests/test_from_thread.py",
            "tests/streams/test_memory.py",
            "tests/test_lowlevel.py",
            "tests/test_eventloop.py",
            "tests/test_contextmanagers.py",
        ],
    ),
    Suite("aiostream", "aiostream==0.8.1", [], ["tests"]),
    Suite(
        "aiocache",
        "aiocache==0.12.3",
        ["marshmallow<4", "msgpack", "redis<5", "aiomcache"],
        ["tests/ut"],
        ["-p", "no:randomly"],
    ),
    Suite("async-lru", "async-lru==2.4.0", [], ["tests"]),
    Suite("aiosqlite", "aiosqlite==0.22.1", [], ["aiosqlite/tests/smoke.py"]),  # unittest
    Suite("aiofiles", "aiofiles==25.1.0", [], ["tests"], allow="open at:tests/*"),
    Suite("janus", "janus==2.0.0", [], ["tests"], ["--ignore=tests/test_benchmarks.py"]),
    Suite("asgiref", "asgiref==3.13.0", [], ["tests"]),
]


def sh(*cmd: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], check=True, text=True, **kwargs)


def install(suites: list[Suite]) -> None:
    """The venv, the runner, loopwatch from this checkout, each suite and its tests."""
    python = VENV / "bin" / "python"
    if not python.exists():
        sh(sys.executable, "-m", "venv", VENV)
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    sh(*pip, *RUNNER, "-e", ROOT)
    deps = sorted({d for s in suites for d in s.deps})
    packages = [s.package for s in suites]
    sh(*pip, *deps, *packages, "--no-binary", ",".join(p.split("==")[0] for p in packages))
    (WORK / "plugins").mkdir(parents=True, exist_ok=True)
    (WORK / "plugins" / "suite_outcomes.py").write_text(OUTCOMES_PLUGIN)
    for suite in suites:
        target = WORK / suite.name
        if target.exists():
            continue
        with tempfile.TemporaryDirectory() as tmp:
            sh(python, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
               suite.package, "-d", tmp)  # fmt: skip
            [sdist] = Path(tmp).glob("*.tar.gz")
            with tarfile.open(sdist) as tar:
                tar.extractall(tmp, filter="data")
            [unpacked] = [p for p in Path(tmp).iterdir() if p.is_dir()]
            shutil.move(unpacked, target)
        # As its developers run it: the package from its checkout, so its code is theirs.
        sh(*pip, "--no-deps", "-e", target)


def run_once(suite: Suite, watched: bool, out: Path) -> dict[str, object]:
    """One pytest run of ``suite``: its wall time, exit code, outcomes, loopwatch report."""
    outcomes = out / f"{suite.name}-{'lw' if watched else 'plain'}-outcomes.json"
    report = out / f"{suite.name}-report.json"
    for stale in (outcomes, report):
        stale.unlink(missing_ok=True)
    cmd = [
        str(VENV / "bin" / "python"), "-m", "pytest", *suite.tests, "-q", "-o", "addopts=",
        "-p", "no:cacheprovider", "-p", "suite_outcomes", "-W", "ignore::DeprecationWarning",
        *suite.args,
    ]  # fmt: skip
    if watched:
        cmd += ["--loopwatch", f"--loopwatch-report={report}"]
        if suite.allow:
            cmd += ["-o", f"loopwatch_allow={suite.allow}"]
    # Bytecode cached, as on a user's machine (this VM's shell sets PYTHONDONTWRITEBYTECODE).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPATH=str(WORK / "plugins"), OUTCOMES=str(outcomes))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        cmd, cwd=WORK / suite.name, env=env, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    output = done.stdout + done.stderr
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "exit": done.returncode,
        "crash": done.returncode in (2, 3, 4) or "INTERNALERROR" in output,
        "tail": output.strip().splitlines()[-3:],
        "outcomes": json.loads(outcomes.read_text()) if outcomes.exists() else {},
        "report": json.loads(report.read_text()) if watched and report.exists() else None,
    }


def judge(plain: dict[str, object], watched: dict[str, object]) -> dict[str, object]:
    """What the plugin changed in one pair of runs."""
    before: dict[str, str] = plain["outcomes"]
    after: dict[str, str] = watched["outcomes"]
    report: dict[str, object] = watched["report"] or {}
    blocked: dict[str, object] = report.get("blocked", {})
    warned: dict[str, object] = report.get("warnings", {})
    newly_failing = sorted(
        k for k, v in after.items() if v != "passed" and before.get(k) == "passed"
    )
    return {
        "tests": len(after),
        "newly_failing": newly_failing,
        "without_verdict": [k for k in newly_failing if k not in blocked],
        "verdicts": len(blocked),
        "verdict_lines": sorted(
            {
                f"{k}: {v[0]['what']} at {v[0]['culprit'].rsplit('/', 1)[-1]}"
                for k, v in blocked.items()
            }
        )[:10],
        "warnings": len(warned),
        "watched": report.get("watched", 0),
        "not_watched": len(report.get("not_watched", [])),
        "crash": bool(plain["crash"]) or bool(watched["crash"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--no-install", action="store_true")
    args = parser.parse_args()
    suites = [s for s in SUITES if not args.only or s.name in args.only]
    if not args.no_install:
        install(SUITES)
    out = WORK / "out"
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, object]]] = {s.name: [] for s in suites}
    for run in range(args.runs):
        for suite in suites:
            order = (False, True) if run % 2 == 0 else (True, False)  # interleaved
            pair = {w: run_once(suite, w, out) for w in order}
            verdict = judge(pair[False], pair[True])
            verdict.update(plain_s=pair[False]["wall_s"], loopwatch_s=pair[True]["wall_s"],
                           plain_cpu_s=pair[False]["cpu_s"], loopwatch_cpu_s=pair[True]["cpu_s"],
                           plain_exit=pair[False]["exit"], loopwatch_exit=pair[True]["exit"],
                           tail=pair[True]["tail"])  # fmt: skip
            runs[suite.name].append(verdict)
            print(f"run {run + 1} {suite.name}: {verdict['plain_s']} -> {verdict['loopwatch_s']} s, "
                  f"{verdict['verdicts']} verdicts, {len(verdict['without_verdict'])} unexplained", flush=True)  # fmt: skip
    summary = {name: summarize(found) for name, found in runs.items()}
    machine = f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if RESULTS.exists() and args.only:
        old = json.loads(RESULTS.read_text())
        summary = {**old.get("suites", {}), **summary}
    RESULTS.write_text(json.dumps({"machine": machine, "runs": args.runs, "suites": summary,
                                   "raw": runs}, indent=1) + "\n")  # fmt: skip
    print(table(summary, machine))


def summarize(found: list[dict[str, object]]) -> dict[str, object]:
    plain = statistics.median(float(r["plain_s"]) for r in found)
    watched = statistics.median(float(r["loopwatch_s"]) for r in found)
    plain_cpu = statistics.median(float(r["plain_cpu_s"]) for r in found)
    watched_cpu = statistics.median(float(r["loopwatch_cpu_s"]) for r in found)
    return {
        "tests": max(int(r["tests"]) for r in found),
        "cpu_ratio": round(watched_cpu / plain_cpu, 3),
        "plain_s": round(plain, 2),
        "loopwatch_s": round(watched, 2),
        "ratio": round(watched / plain, 3),
        "crashes": sum(bool(r["crash"]) for r in found),
        "verdicts_per_run": [r["verdicts"] for r in found],
        "warnings_per_run": [r["warnings"] for r in found],
        "newly_failing_per_run": [len(r["newly_failing"]) for r in found],
        "without_verdict": sorted({k for r in found for k in r["without_verdict"]}),
        "watched": found[-1]["watched"],
        "not_watched": found[-1]["not_watched"],
        "verdict_lines": found[-1]["verdict_lines"],
    }


def table(summary: dict[str, dict[str, object]], machine: str) -> str:
    lines = [
        f"Machine: {machine}. Medians over the runs of the pytest process's wall time, and of its CPU time (user + system).",
        "",
        "| suite | tests | watched / not | plain → loopwatch (s) | wall | CPU | crashes | verdicts per run | failing without a verdict | warnings per run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['tests']} | {s['watched']} / {s['not_watched']} | {s['plain_s']} → {s['loopwatch_s']} "
            f"| {s['ratio']:.2f}x | {s['cpu_ratio']:.2f}x | {s['crashes']} | {s['verdicts_per_run']} | {len(s['without_verdict'])} "
            f"| {s['warnings_per_run']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
