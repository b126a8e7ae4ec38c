"""``strategy = "auto"`` in a real daemon: it picks what a careful person would, and says why.

The measuring windows sleep on purpose: rates and lag shares are averages over time.
Everything else waits for what the daemon reports.
"""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import datetime
from typing import Any

from loopwatch.daemon.top import Samples
from tests.daemon_process import DaemonProcess
from tests.helpers import StartDaemon, WriteConfig, worker_toml
from tests.waiting import poll

LAG = "loopwatch_event_loop_lag_seconds"
# (target, kwargs, the strategy a careful person picks): the four natures of FACTS.md.
FOUR: dict[str, tuple[str, dict[str, object], str]] = {
    "io": ("tests.targets:block", {"seconds": 0.05}, "thread"),
    "python": ("tests.targets:count", {"n": 2_000_000}, "process"),
    "holds_gil": ("tests.targets:native_sum", {"n": 5_000_000}, "process"),
    "hashing": ("tests.targets:hash_buffer", {"mb": 24}, "thread"),
}
MEASURE_S = 20.0


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


def measure(daemon: DaemonProcess) -> tuple[float, dict[str, float]]:
    """Over MEASURE_S: the share of lag samples above 25 ms, and each worker's calls/s."""
    before, started = daemon.scrape(), time.monotonic()
    time.sleep(MEASURE_S)
    after, elapsed = daemon.scrape(), time.monotonic() - started
    samples = _delta(after, before, f"{LAG}_count", ())
    fast = _delta(after, before, f"{LAG}_bucket", (("le", "0.025"),))
    rates = {name: _calls(after, name) - _calls(before, name) for name in FOUR}
    return (samples - fast) / samples, {n: c / elapsed for n, c in rates.items()}


def _delta(
    after: Samples, before: Samples, name: str, labels: tuple[tuple[str, str], ...]
) -> float:
    return after[(name, labels)] - before.get((name, labels), 0.0)


def _calls(samples: Samples, worker: str) -> float:
    """Calls of ``worker`` that ended well, whatever strategy ran them."""
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "loopwatch_tasks_total"
        and ("worker", worker) in labels
        and ("outcome", "ok") in labels
    )


def test_auto_picks_what_a_careful_person_would_and_does_as_well(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    hand_picked = {name: fit for name, (_, _, fit) in FOUR.items()}
    hand = start_daemon(write_config(four_workers(hand_picked), "hand.toml"))
    hand.wait_ready()
    poll(lambda: all(_calls(hand.scrape(), n) >= 2 for n in FOUR), what="every worker ran")
    hand_lag, hand_rates = measure(hand)
    assert hand.stop() == 0

    auto = start_daemon(write_config(four_workers(dict.fromkeys(FOUR, "auto")), "auto.toml"))
    auto.wait_ready()
    started = time.monotonic()
    poll(
        lambda: {n: d["strategy"] for n, d in decisions(auto).items()} == hand_picked,
        timeout=45,
        what="every auto worker on the hand-picked strategy",
    )
    converged = time.monotonic() - started
    auto_lag, auto_rates = measure(auto)
    final = decisions(auto)
    python_ran_on = {
        dict(labels)["strategy"]
        for (name, labels), _ in auto.scrape().items()
        if name == "loopwatch_tasks_total" and ("worker", "python") in labels
    }
    assert auto.stop() == 0

    assert {n: d["strategy"] for n, d in final.items()} == hand_picked, "and it stayed there"
    for name, decision in final.items():
        assert decision["switches"] <= 2, (name, decision)
    moved = {e["worker"]: e for e in auto.named("strategy_switched")}
    assert set(moved) == {"python", "holds_gil"}
    assert "GIL" in moved["python"]["reason"]
    assert "lets go of it" in final["hashing"]["reason"]
    assert auto_lag <= 1.5 * hand_lag + 0.005, (auto_lag, hand_lag, converged)
    for name in FOUR:
        assert auto_rates[name] >= 0.8 * hand_rates[name], (name, auto_rates, hand_rates)
    # The calls are counted under the strategy that ran them: first thread, then process.
    assert python_ran_on == {"thread", "process"}


def test_auto_follows_a_change_of_phase_and_does_not_flap(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    since = time.time() + 2.0  # the daemon's start-up is not part of the I/O phase
    text = "[executors.auto]\nwindow = 2.0\nmin_dwell = 10.0\n" + "".join(
        (
            worker_toml("phased", "tests.targets:phases", "auto", {"since": since, "io_for": 16.0}),
            worker_toml(
                "alternating",
                "tests.targets:phases",
                "auto",
                {"since": since, "io_for": 0.0, "period": 2.0},
            ),
        )
    )
    daemon = start_daemon(write_config(text))
    daemon.wait_ready()
    switched = daemon.wait_event("strategy_switched", lambda e: e["worker"] == "phased", timeout=45)
    assert switched["to"] == "process"
    # Moved only once the CPU phase began (16 s after `since`), not during the I/O.
    assert datetime.fromisoformat(switched["timestamp"]).timestamp() >= since + 16.0
    time.sleep(max(0.0, since + 40.0 - time.time()))
    final = decisions(daemon)
    assert daemon.stop() == 0
    assert final["phased"]["strategy"] == "process"
    assert final["phased"]["switches"] == 1
    assert final["alternating"]["switches"] <= 2, final["alternating"]
    alternating = [e for e in daemon.named("strategy_switched") if e["worker"] == "alternating"]
    assert len(alternating) <= 2


def test_advise_mode_logs_the_decision_and_switches_nothing(
    write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    text = '[executors.auto]\nmode = "advise"\nwindow = 1.0\n' + worker_toml(
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
