"""Stall diagnosis on the hard cases, loopwatch side by side with aiocop, loopsentry, pyleak.

Each (tool, case) runs in a fresh interpreter (``benchmarks/stall_cases.py``), 3 times.
The peers live only in this benchmark's own environment, ``benchmarks/.peers-venv``
(Python 3.12: loopsentry needs it), built on first use with loopwatch installed from
this checkout. Scores per run:

- detected: the tool reported the stall at all;
- culprit right: the function that held the loop (or the GIL) longest is named by the
  tool's top report (for back-to-back blocks: both functions named);
- cause right: the share of the stall's true seconds whose reported cause is the true
  one (only loopwatch and aiocop report a cause: aiocop's io/cpu are mapped to wait/cpu);
- duration error: |reported seconds - true seconds| / true seconds;
- attribution error: per culprit, |attributed - true| / true (back-to-back only);
- while stuck: the first report came before the block ended, and how long after the
  threshold it came;
- idle overhead: process CPU share with the tool watching an idle loop for 10 s.

Usage: python benchmarks/stall_accuracy.py [--repeats 3] [--tools loopwatch,aiocop,...]
Writes benchmarks/results/stall_accuracy.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "benchmarks/.peers-venv"
PEERS = ("aiocop==1.2.1", "loopsentry==1.2.0", "pyleak==0.2.0")
TOOLS = ("loopwatch", "aiocop", "loopsentry", "pyleak")
CASES = ("library_wait", "back_to_back", "gil_thread", "gc", "native_loop", "stuck")
THRESHOLD_S = 0.1
CAUSE_NAMES = {"io_blocking": "wait", "cpu_blocking": "cpu"}


def python312() -> str:
    # pyenv's own build first: its shim fails when 3.12 is not the selected version.
    found = next(
        (str(p) for p in sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))), None
    ) or shutil.which("python3.12")
    if found is None:
        sys.exit("needs Python 3.12 (loopsentry requires it): install it, e.g. with pyenv")
    return found


def ensure_venv() -> Path:
    python = VENV / "bin/python"
    if not python.exists():
        subprocess.run([python312(), "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-e", str(ROOT), *PEERS], check=True
        )
    return python


def run_one(python: Path, tool: str, case: str) -> dict[str, Any]:
    result = subprocess.run(
        [str(python), str(ROOT / "benchmarks/stall_cases.py"), tool, case],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        return {"tool": tool, "case": case, "failed": result.stderr[-2000:]}
    return dict(json.loads(lines[-1]))


def _names(text: str, function: str) -> bool:
    return (
        text.rstrip().endswith(f" {function}")
        or f"in {function}" in text
        or (f":{function}" in text or f" {function}\n" in text)
    )


def score(run: dict[str, Any]) -> dict[str, Any]:
    """The scores of one run (see the module docstring)."""
    if "failed" in run:
        return {"detected": False, "error": run["failed"][-300:]}
    truth = run["truth"]
    reports = run["reports"]
    true_total = sum(s for _, s, _ in truth["culprits"])
    top_true = max(truth["culprits"], key=lambda c: c[1])
    final = [r for r in reports if r["seconds"] > 0] or reports
    out: dict[str, Any] = {"detected": bool(reports)}
    if not reports:
        return out
    top = max(final, key=lambda r: r["seconds"])
    if len(truth["culprits"]) > 1:
        out["culprit_right"] = all(
            any(_names(r["culprit"], fn) for r in final) for fn, _, _ in truth["culprits"]
        )
        errors = []
        for fn, seconds, _ in truth["culprits"]:
            attributed = sum(r["seconds"] for r in final if _names(r["culprit"], fn))
            errors.append(abs(attributed - seconds) / seconds)
        out["attribution_error"] = max(errors)
    else:
        out["culprit_right"] = _names(top["culprit"], top_true[0])
    causes = [r for r in final if r["cause"] is not None]
    if causes:
        right = 0.0
        for fn, seconds, cause in truth["culprits"]:
            mine = [r for r in final if _names(r["culprit"], fn)] or final
            share = sum(
                r["seconds"] for r in mine if CAUSE_NAMES.get(r["cause"], r["cause"]) == cause
            )
            right += min(seconds, share)
        out["cause_right"] = right / true_total
    out["duration_error"] = abs(sum(r["seconds"] for r in final) - true_total) / true_total
    first = min(r["at"] for r in reports)
    out["while_stuck"] = first < truth["ended"]
    out["report_after_threshold_s"] = first - (truth["started"] + THRESHOLD_S)
    return out


def summarise(scores: list[dict[str, Any]]) -> dict[str, Any]:
    def frac(key: str) -> str:
        return f"{sum(1 for s in scores if s.get(key))}/{len(scores)}"

    def med(key: str) -> float | None:
        values = [s[key] for s in scores if key in s]
        return median(values) if values else None

    return {
        "detected": frac("detected"),
        "culprit_right": frac("culprit_right"),
        "cause_right": med("cause_right"),
        "duration_error": med("duration_error"),
        "attribution_error": med("attribution_error"),
        "while_stuck": frac("while_stuck"),
        "report_after_threshold_s": med("report_after_threshold_s"),
    }


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    python = ensure_venv()
    tools, cases = args.tools.split(","), args.cases.split(",")
    rows, raw = [], []
    for case in cases:
        for tool in tools:
            runs = [run_one(python, tool, case) for _ in range(args.repeats)]
            raw.extend(runs)
            rows.append({"case": case, "tool": tool, **summarise([score(r) for r in runs])})
            print(f"{case:>13} {tool:>10} {rows[-1]}", file=sys.stderr)
    out = ROOT / "benchmarks/results/stall_accuracy.json"
    partial = set(tools) != set(TOOLS) or set(cases) != set(CASES)
    old = json.loads(out.read_text()) if partial and out.exists() else None
    if old is not None:
        # A partial re-run replaces its own rows and keeps the others and the idle figures.
        done = {(r["case"], r["tool"]) for r in rows}
        rows = [r for r in old["rows"] if (r["case"], r["tool"]) not in done] + rows
        rows.sort(key=lambda r: (CASES.index(r["case"]), TOOLS.index(r["tool"])))
        raw = [r for r in old["raw"] if (r["case"], r["tool"]) not in done] + raw
        idle = old["idle_cpu_share"]
    else:
        idle = {
            tool: median(
                run_one(python, tool, "idle").get("cpu_share", float("nan")) for _ in range(3)
            )
            for tool in ("none", *tools)
        }
    report = {
        "machine": {"python": platform.python_version(), "cpus": 2, "node": platform.node()},
        "repeats": args.repeats,
        "rows": rows,
        "idle_cpu_share": idle,
        "raw": raw,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        "| case | tool | detected | culprit right | cause right | duration error | attribution error | reported while stuck | first report after threshold |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        late = r["report_after_threshold_s"]
        print(
            f"| {r['case']} | {r['tool']} | {r['detected']} | {r['culprit_right']} | {pct(r['cause_right'])} "
            f"| {pct(r['duration_error'])} | {pct(r['attribution_error'])} | {r['while_stuck']} "
            f"| {'-' if late is None else f'{late:.2f} s'} |"
        )
    print()
    print("| tool | idle CPU (share of a core) |")
    print("| --- | --- |")
    for tool, share in idle.items():
        print(f"| {tool} | {share * 100:.2f}% |")


if __name__ == "__main__":
    main()
