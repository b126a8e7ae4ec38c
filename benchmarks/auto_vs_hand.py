"""``auto`` against hand-picked strategies: four kinds of worker in a real daemon, as a user sees it.

Each run starts the daemon twice on the same machine, one after the other: the
workers on the strategies a careful person picks, then every worker on ``auto``
(default settings). Counted from the endpoint over 20 s: the share of lag samples
above 25 ms and each worker's calls/s; for auto, the window starts once every worker
runs where it should (the seconds that took are reported too). Also the same four
workers all on ``thread`` and all on ``process``, the two guesses auto replaces.

Usage: python benchmarks/auto_vs_hand.py [--runs 3]
Writes benchmarks/results/auto_vs_hand.json and .md (medians over the runs).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.daemon_process import DaemonProcess  # noqa: E402 - after the path
from tests.helpers import free_port  # noqa: E402
from tests.integration.test_auto import FOUR, decisions, four_workers, measure  # noqa: E402
from tests.waiting import poll  # noqa: E402

HAND = {name: fit for name, (_, _, fit) in FOUR.items()}
SETUPS = {
    "hand-picked": HAND,
    "auto": dict.fromkeys(FOUR, "auto"),
    "all thread": dict.fromkeys(FOUR, "thread"),
    "all process": dict.fromkeys(FOUR, "process"),
}


def one(setup: str, where: Path) -> dict[str, Any]:
    port = free_port()
    config = where / f"{setup.replace(' ', '_')}.toml"
    config.write_text(
        f'[metrics]\nport = {port}\n[logging]\nformat = "json"\n' + four_workers(SETUPS[setup])
    )
    daemon = DaemonProcess(config, port)
    try:
        daemon.wait_ready()
        started = time.monotonic()
        if setup == "auto":
            poll(
                lambda: {n: d["strategy"] for n, d in decisions(daemon).items()} == HAND,
                timeout=90,
                what="auto on the hand-picked strategies",
            )
        else:
            time.sleep(3.0)  # pools warm, every worker running
        converged = time.monotonic() - started
        lag, rates = measure(daemon)
        switches = {n: d["switches"] for n, d in decisions(daemon).items()}
    finally:
        daemon.stop()
    return {
        "setup": setup,
        "lag_over_25ms": lag,
        "calls_per_s": rates,
        "seconds_to_settle": round(converged, 1) if setup == "auto" else None,
        "switches": switches or None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            for setup in SETUPS:
                row = one(setup, Path(tmp))
                row["run"] = i
                runs.append(row)
                print(json.dumps(row), flush=True)
    table = []
    for setup in SETUPS:
        rows = [r for r in runs if r["setup"] == setup]
        table.append(
            {
                "setup": setup,
                "lag_over_25ms": median(r["lag_over_25ms"] for r in rows),
                "calls_per_s": {n: median(r["calls_per_s"][n] for r in rows) for n in FOUR},
                "seconds_to_settle": median(r["seconds_to_settle"] for r in rows)
                if setup == "auto"
                else None,
            }
        )
    machine = {
        "python": platform.python_version(),
        "cpus": __import__("os").cpu_count(),
        "machine": platform.machine(),
    }
    out = ROOT / "benchmarks" / "results"
    (out / "auto_vs_hand.json").write_text(
        json.dumps({"machine": machine, "runs": runs, "medians": table}, indent=2) + "\n"
    )
    lines = [
        (
            f"# auto against hand-picked strategies ({args.runs} runs, medians; "
            f"{machine['cpus']} CPUs, Python {machine['python']})"
        ),
        "",
        (
            "| setup | lag samples > 25 ms | io calls/s | python calls/s | holds_gil calls/s "
            "| hashing calls/s | s to settle |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in table:
        rates = row["calls_per_s"]
        settle = f"{row['seconds_to_settle']:.0f}" if row["seconds_to_settle"] is not None else ""
        lines.append(
            f"| {row['setup']} | {row['lag_over_25ms']:.2%} | "
            + " | ".join(f"{rates[n]:.1f}" for n in FOUR)
            + f" | {settle} |"
        )
    (out / "auto_vs_hand.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
