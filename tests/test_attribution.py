"""Every case the watchdog meets, as a row: what was gathered, and the verdict on it.

The readings are the figures the watchdog took in each case (measured on this machine
kind: ``benchmarks/stall_cases.py``, the CI failures of earlier rounds, two CPU hogs on
2 cores). A new oddity is a new row here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from loopwatch import causes
from loopwatch.attribution import IDLE_IN_SELECTOR, Call, Holder, Look, attribute, where
from loopwatch.stall import Sample, Stall

LIB = str(Path(os.__file__).parent)
MAIN = "/srv/app/main.py:30 <module>"
# The frames a running asyncio loop sits in, outermost first.
LOOP = (
    MAIN,
    f"{LIB}/asyncio/runners.py:118 run",
    f"{LIB}/asyncio/base_events.py:640 run_until_complete",
    f"{LIB}/asyncio/base_events.py:607 run_forever",
    f"{LIB}/asyncio/base_events.py:1922 _run_once",
)
CALLBACK = (*LOOP, f"{LIB}/asyncio/events.py:80 _run")
IDLE = (*LOOP, f"{LIB}/selectors.py:468 select")
FETCH = (*CALLBACK, "/srv/app/report.py:12 fetch_report", f"{LIB}/subprocess.py:505 run")
CRUNCH = (*CALLBACK, "/srv/app/report.py:20 crunch")
PARSE = (*CALLBACK, "/srv/app/feed.py:7 parse_feed")
JSON_TRIGGER = (f"{LIB}/threading.py:1002 run", "/srv/app/parser.py:9 parse_json")
POOL_THREAD = 7


def hold_gil() -> int:
    """The target of a pool call: its code names it once the call has returned."""
    return sum(range(10))


HOLD_LINE = f"{hold_gil.__code__.co_filename}:{hold_gil.__code__.co_firstlineno + 2} hold_gil"
HOLD = (f"{LIB}/threading.py:1002 run", HOLD_LINE)


def reading(
    at: float,
    loop_cpu: float = 0.0,
    queue: float | None = 0.0,
    others: dict[int, float] | None = None,
) -> causes.Reading:
    return causes.Reading(at, loop_cpu, queue, dict(others or {}))


START = reading(0.0, others={POOL_THREAD: 0.0})


def look(end: float = 0.1, **fields: object) -> Look:
    """One 10 ms-or-longer interval from 0 to ``end``, gathered with ``fields``."""
    after = fields.pop("after", reading(end, others={POOL_THREAD: 0.0}))
    return Look(START, after, 0.0, **fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Row:
    """A gathered interval and the verdict expected on it."""

    look: Look
    cause: str
    culprit: str
    worker: str | None = None
    holders: tuple[str, ...] = ()


ROWS = {
    # benchmarks/stall_cases.py: library_wait. Blocked in subprocess, off the CPU: the
    # user's line that called the library, not subprocess.py.
    "a wait in a library": Row(
        look(loop_stack=FETCH, worker="reports"),
        "wait",
        "/srv/app/report.py:12 fetch_report",
        "reports",
    ),
    # stall_cases: back_to_back, its first part. The loop ran its own code.
    "the loop's code ran": Row(
        look(after=reading(0.1, loop_cpu=0.09), loop_stack=CRUNCH),
        "cpu",
        "/srv/app/report.py:20 crunch",
    ),
    # stall_cases: gil_thread. The watchdog woke late, a pool thread ran throughout.
    "a thread held the GIL": Row(
        look(
            after=reading(0.1, others={POOL_THREAD: 0.09}),
            late=True,
            loop_stack=IDLE,
            holder=Holder("pool_0", HOLD, "parser", hold_gil.__code__),
        ),
        "gil",
        HOLD_LINE,
        "parser",
        ("pool_0",),
    ),
    # Last round: the holder's call returned before the watchdog got the GIL back; its
    # stack no longer shows it, its target does.
    "a GIL holder whose call returned": Row(
        look(
            after=reading(0.1, others={POOL_THREAD: 0.09}),
            late=True,
            holder=Holder("pool_0", (f"{LIB}/threading.py:320 wait",), "parser", hold_gil.__code__),
        ),
        "gil",
        where(hold_gil.__code__),
        "parser",
        ("pool_0",),
    ),
    # Beside two CPU hogs a thread's C call got ~40% of the interval: still the holder.
    "a GIL holder slowed by hogs": Row(
        look(
            after=reading(1.0, loop_cpu=0.02, others={POOL_THREAD: 0.4}),
            late=True,
            holder=Holder("pool_0", HOLD, "parser", hold_gil.__code__),
        ),
        "gil",
        HOLD_LINE,
        "parser",
        ("pool_0",),
    ),
    # CI 3.13, 1 run in 8 (faf707d, d2b8945): a C parse on the loop, whose collections
    # let another thread in. The dump shows the loop in the user's call: it is the
    # culprit, the thread only one of the GIL's holders.
    "a C call on the loop, a thread in between": Row(
        look(
            after=reading(0.1, others={POOL_THREAD: 0.05}),
            late=True,
            sampled=False,
            dump_stack=PARSE,
            holder=Holder("pool_0", HOLD, "parser", hold_gil.__code__),
        ),
        "gil",
        "/srv/app/feed.py:7 parse_feed",
        None,
        ("pool_0",),
    ),
    # stall_cases gil_thread: run_in_executor starts the pool's thread, which holds the
    # GIL at once; the loop waits in Thread.start, under a line of the user's. It waits:
    # the holder is the culprit.
    "the loop waiting in a thread's start": Row(
        look(
            after=reading(0.1, others={POOL_THREAD: 0.09}),
            late=True,
            sampled=False,
            dump_stack=(
                *CALLBACK,
                "/srv/app/feed.py:9 fetch_all",
                f"{LIB}/asyncio/base_events.py:828 run_in_executor",
                f"{LIB}/concurrent/futures/thread.py:176 submit",
                f"{LIB}/threading.py:964 start",
                f"{LIB}/threading.py:629 wait",
            ),
            holder=Holder("pool_0", HOLD, "parser", hold_gil.__code__),
        ),
        "gil",
        HOLD_LINE,
        "parser",
        ("pool_0",),
    ),
    # The same dump, but the loop waited in its selector: the holder is the culprit.
    "a dump of the loop idle: the holder": Row(
        look(
            after=reading(0.1, others={POOL_THREAD: 0.05}),
            late=True,
            sampled=False,
            dump_stack=IDLE,
            holder=Holder("pool_0", HOLD, "parser", hold_gil.__code__),
        ),
        "gil",
        HOLD_LINE,
        "parser",
        ("pool_0",),
    ),
    # stall_cases: gc. A collection on the loop, seen while it ran.
    "a collection on the loop": Row(
        look(
            gc_s=0.08,
            gc_generation=2,
            loop_stack=(*CALLBACK, "/srv/app/cache.py:3 collect_now"),
        ),
        "gc",
        "/srv/app/cache.py:3 collect_now",
    ),
    # a329744: a big json.loads on a pool thread sets off a collection that holds the
    # GIL; the watchdog is late, the trigger's stack names the code and its worker.
    "a collection a pool thread set off": Row(
        look(
            gc_s=0.08,
            gc_generation=2,
            late=True,
            loop_stack=IDLE,
            gc_trigger=JSON_TRIGGER,
            gc_worker="feeds",
        ),
        "gc",
        "/srv/app/parser.py:9 parse_json",
        "feeds",
    ),
    # stall_cases: native_loop. A C call on the loop: nothing Python ran, the watchdog
    # was late, and faulthandler's dump (from C) has the line.
    "native code on the loop, named from the dump": Row(
        look(late=True, sampled=False, dump_stack=(*CALLBACK, "/srv/app/stats.py:5 native")),
        "unknown",
        "/srv/app/stats.py:5 native",
    ),
    # e13003b: nobody could see, and the culprit agrees with the cause.
    "blind, no dump": Row(look(late=True, sampled=False), "unknown", "unknown (the GIL was held)"),
    "starved, seen only at its end": Row(
        look(
            after=reading(0.4, loop_cpu=0.0005, queue=0.2753),
            late=True,
            sampled=False,
        ),
        "starved",
        "unknown (the loop thread waited for a CPU)",
    ),
    # 865305f: the baseline's run-queue figure is up to a second old; the wait is still
    # this interval's.
    "starved, an old baseline": Row(
        look(
            after=reading(0.4, loop_cpu=0.0005, queue=0.2753),
            sampled=False,
        ),
        "starved",
        "unknown (the loop thread waited for a CPU)",
    ),
    # Beside two hogs: the loop's code ran a good part of the interval though it waited
    # more for a CPU: cpu, its line.
    "a busy loop beside hogs": Row(
        look(after=reading(1.0, loop_cpu=0.2, queue=0.4), loop_stack=CRUNCH),
        "cpu",
        "/srv/app/report.py:20 crunch",
    ),
    # Hardening round 4, beside two hogs: an idle loop in selectors.select was a wait
    # stall with the selector as its culprit. It is in no one's code.
    "idle in the selector on a busy host": Row(
        look(loop_stack=IDLE, worker="reports"), "unknown", IDLE_IN_SELECTOR
    ),
    "idle in the selector, starved": Row(
        look(after=reading(0.1, queue=0.09), loop_stack=IDLE),
        "starved",
        "unknown (the loop thread waited for a CPU)",
    ),
    # The loop came back before the look, the previous look saw the code: the last
    # stretch goes to it, with this interval's cause.
    "back before the look": Row(
        look(
            sampled=False,
            late=True,
            previous=Sample("/srv/app/report.py:20 crunch", "reports", "cpu", list(CRUNCH)),
        ),
        "unknown",
        "/srv/app/report.py:20 crunch",
        "reports",
    ),
    "idle after a stretch seen": Row(
        look(
            loop_stack=IDLE,
            previous=Sample("/srv/app/report.py:12 fetch_report", "reports", "wait", list(FETCH)),
        ),
        "unknown",
        "/srv/app/report.py:12 fetch_report",
        "reports",
    ),
    # Blind, but a worker's call through ``Offload`` overlapped the interval: its target.
    "blind, a worker's call overlapped": Row(
        look(late=True, sampled=False, last_call=Call("reports", MAIN, 0.05, 0.2)),
        "unknown",
        MAIN,
        "reports",
    ),
    "blind, a worker's call long before": Row(
        look(late=True, sampled=False, last_call=Call("reports", MAIN, -2.0, -1.0)),
        "unknown",
        "unknown (the GIL was held)",
    ),
    # The loop in a library's frames only (no user line), a worker's call running.
    "a builtin target overlapped": Row(
        look(
            loop_stack=(*CALLBACK, f"{LIB}/json/decoder.py:353 raw_decode"),
            last_call=Call("feeds", None, 0.0, 0.1),
        ),
        "wait",
        f"{LIB}/json/decoder.py:353 raw_decode",
        "feeds",
    ),
}


@pytest.mark.parametrize("name", ROWS)
def test_each_case_is_attributed(name: str) -> None:
    row = ROWS[name]
    found = attribute(row.look)
    assert (found.verdict.cause, found.sample.culprit, found.sample.worker) == (
        row.cause,
        row.culprit,
        row.worker,
    )
    assert found.holders == row.holders
    assert found.sample.cause == found.verdict.cause


def test_the_task_and_request_go_with_the_sample() -> None:
    found = attribute(look(loop_stack=FETCH, task="Task-3 (handle)", request="GET /report"))
    assert (found.sample.task, found.sample.request) == ("Task-3 (handle)", "GET /report")


def test_attribution_is_pure() -> None:
    """The same look, the same verdict: nothing is read from the process."""
    row = ROWS["a thread held the GIL"]
    assert attribute(row.look) == attribute(replace(row.look))


# --- whole stalls: the intervals charged, then fitted to the probe's duration ---------


@dataclass
class StallRow:
    looks: list[tuple[Look, float]]  # each interval and its seconds
    duration: float
    cause: str
    culprits: list[tuple[str, str]] = field(default_factory=list)  # (culprit, cause)


STALLS = {
    # stall_cases: back_to_back. Two blocks in one stall, split by culprit.
    "two blocks back to back": StallRow(
        [
            (look(after=reading(0.1, loop_cpu=0.1), loop_stack=CRUNCH), 0.3),
            (look(loop_stack=(*CALLBACK, "/srv/app/report.py:30 wait_reply")), 0.6),
        ],
        0.9,
        "wait",
        [("/srv/app/report.py:30 wait_reply", "wait"), ("/srv/app/report.py:20 crunch", "cpu")],
    ),
    # c3704f8: the kernel counts a run-queue wait when the thread runs again: the last
    # look has it all, and the stretches nobody could name were a wait for a CPU.
    "a wait for a CPU counted late": StallRow(
        [
            (look(late=True, sampled=False), 0.938),
            (look(after=reading(0.01, queue=0.9501), sampled=False), 0.0106),
        ],
        0.9486,
        "starved",
        [("unknown (the GIL was held)", "starved")],
    ),
    # Hardening round 4, beside two hogs: 0.354 s of run-queue wait in a 0.174 s stall
    # logged as cpu. The host did not run the loop: starved, its line kept.
    "a run-queue wait covering the stall": StallRow(
        [
            (
                look(after=reading(0.1, loop_cpu=0.03, queue=0.2), loop_stack=CRUNCH),
                0.1,
            ),
            (look(after=reading(0.07, loop_cpu=0.0, queue=0.154), loop_stack=CRUNCH), 0.074),
        ],
        0.174,
        "starved",
        [("/srv/app/report.py:20 crunch", "starved")],
    ),
    # Half of it waited for a CPU, the code ran the rest: the code's stretches stay.
    "a run-queue wait covering part of the stall": StallRow(
        [(look(after=reading(0.4, loop_cpu=0.3, queue=0.1), loop_stack=CRUNCH), 0.4)],
        0.4,
        "cpu",
        [("/srv/app/report.py:20 crunch", "cpu")],
    ),
}


@pytest.mark.parametrize("name", STALLS)
def test_each_stall_is_attributed(name: str) -> None:
    row = STALLS[name]
    stall = Stall(beat=0.0, start=0.01)
    last: Sample | None = None
    for gathered, seconds in row.looks:
        # As the watchdog follows a stall: each look knows what the one before saw.
        found = attribute(replace(gathered, previous=last))
        stall.charge(found.sample, seconds, found.verdict)
        last = found.sample
    stall.fit(row.duration)
    stall.account_late_queue_wait(row.duration)
    event = stall.event(row.duration, ongoing=False)
    assert event.cause == row.cause
    assert [(c.culprit, c.cause) for c in event.culprits] == row.culprits
    assert sum(c.seconds for c in event.culprits) == pytest.approx(row.duration, abs=1e-3)


def test_a_dump_cut_before_the_loop_beats_a_late_look_at_an_idle_loop() -> None:
    """Beside 150 threads, loaded: the watchdog's first look found the loop back in select.

    A dump was written while the loop was stuck, so it was not idle then: the line says
    the dump was cut, not that the loop was idle (a loaded run of make test).
    """
    cut = "unknown (the native dump was cut: faulthandler writes 100 of 152 threads)"
    found = attribute(look(0.8, late=True, sampled=True, loop_stack=IDLE, dump_cut=cut))
    assert found.sample.culprit == cut
