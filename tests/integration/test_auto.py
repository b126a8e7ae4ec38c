"""``strategy = "auto"`` in a real daemon: it picks what a careful person would, and says why.

Each test waits for what the daemon reports, with small windows and dwell: the rule
itself, hysteresis included, is tested on recorded evidence in ``tests/test_auto.py``.
"""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import datetime
from typing import Any

from tests.daemon_process import DaemonProcess
from tests.helpers import StartDaemon, WriteConfig, worker_toml
from tests.waiting import poll

# (target, kwargs, the strategy a careful person picks): the four natures of FACTS.md.
FOUR: dict[str, tuple[str, dict[str, object], str]] = {
    "io": ("tests.targets:block", {"seconds": 0.05}, "thread"),
    "python": ("tests.targets:count", {"n": 2_000_000}, "process"),
    "holds_gil": ("tests.targets:native_sum", {"n": 5_000_000}, "process"),
    "hashing": ("tests.targets:hash_buffer", {"mb": 24}, "thread"),
}


def four_workers(strategy: dict[str, str]) -> str:
    return "".join(
        worker_toml(name, target, strategy[name], kwargs, concurrency=2)
        for name, (target, kwargs, _) in FOUR.items()
    )


def decisions(daemon: DaemonProcess) -> dict[str, dict[str, Any]]:
    """The daemon's ``/auto``: each auto worker's strategy now, its moves and reason."""
    url = f"http://127.0.0.1:{daemon.port}/auto"
    with urllib.request.urlopen(url, timeout=5) as response:
        found = json.loads(response.read())["workers"]
    return {d["worker"]: d for d in found}


def test_auto_picks_what_a_careful_person_would(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    # How well it then does against hand-picked strategies (lag, calls/s) is measured
    # by benchmarks/auto_vs_hand.py: a figure over a window is a benchmark's, not a test's.
    hand_picked = {name: fit for name, (_, _, fit) in FOUR.items()}
    text = "[executors.auto]\nwindow = 1.0\nmin_dwell = 1.0\n" + four_workers(
        dict.fromkeys(FOUR, "auto")
    )
    auto = start_daemon(write_config(text, "auto.toml"))
    auto.wait_ready()
    poll(
        lambda: {n: d["strategy"] for n, d in decisions(auto).items()} == hand_picked,
        timeout=60,
        what="every auto worker on the hand-picked strategy",
    )
    poll(
        lambda: {"thread", "process"} <= _ran_on(auto, "python"),
        what="calls of the moved worker counted under the strategy that ran them",
    )
    final = decisions(auto)
    assert auto.stop() == 0

    for name, decision in final.items():
        assert decision["switches"] <= 2, (name, decision)
    moved = {e["worker"]: e for e in auto.named("strategy_switched")}
    assert set(moved) == {"python", "holds_gil"}
    assert "GIL" in moved["python"]["reason"]
    assert "lets go of it" in final["hashing"]["reason"]


def _ran_on(daemon: DaemonProcess, worker: str) -> set[str]:
    return {
        dict(labels)["strategy"]
        for (name, labels), _ in daemon.scrape().items()
        if name == "loopwatch_tasks_total" and ("worker", worker) in labels
    }


def test_auto_follows_a_change_of_phase(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    since = time.time() + 2.0  # the daemon's start-up is not part of the I/O phase
    text = "[executors.auto]\nwindow = 0.5\nmin_dwell = 1.0\n" + worker_toml(
        "phased", "tests.targets:phases", "auto", {"since": since, "io_for": 3.0}
    )
    daemon = start_daemon(write_config(text))
    daemon.wait_ready()
    switched = daemon.wait_event("strategy_switched", lambda e: e["worker"] == "phased", timeout=45)
    assert switched["to"] == "process"
    # Moved only once the CPU phase began, not during the I/O.
    assert datetime.fromisoformat(switched["timestamp"]).timestamp() >= since + 3.0
    poll(
        lambda: "process" in _ran_on(daemon, "phased"),
        what="calls of the moved worker counted on process",
    )
    assert daemon.stop() == 0
    assert len(daemon.named("strategy_switched")) == 1


def test_advise_mode_logs_the_decision_and_switches_nothing(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    text = '[executors.auto]\nmode = "advise"\nwindow = 1.0\nmin_dwell = 1.0\n' + worker_toml(
        "python", "tests.targets:count", "auto", {"n": 2_000_000}, concurrency=2
    )
    daemon = start_daemon(write_config(text))
    daemon.wait_ready()
    advice = daemon.wait_event("strategy_advice", timeout=30)
    assert (advice["worker"], advice["from"], advice["to"]) == ("python", "thread", "process")
    assert advice["mode"] == "advise"
    assert "held the GIL" in advice["reason"]
    final = decisions(daemon)["python"]
    strategies = {
        dict(labels)["strategy"]
        for (name, labels), _ in daemon.scrape().items()
        if name == "loopwatch_tasks_total"
    }
    assert daemon.stop() == 0
    assert (final["strategy"], final["advice"], final["switches"]) == ("thread", "process", 0)
    assert strategies == {"thread"}
    assert not daemon.named("strategy_switched")
    assert len(daemon.named("strategy_advice")) == 1
