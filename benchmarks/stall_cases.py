"""One stall case under one watching tool, in a fresh interpreter: what the tool reported.

Run by ``benchmarks/stall_accuracy.py`` (which builds the environment with the peers):
``python benchmarks/stall_cases.py TOOL CASE``; prints one JSON object on stdout.

Every case blocks the loop in a known way and knows the truth: which function held the
loop (or the GIL) for how long, and why. Each tool is used at its closest setting to
loopwatch's defaults: a 100 ms threshold, a 10 ms probe or check where it has one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

THRESHOLD_S = 0.1


# --- the culprits: user code, as a user would write it -------------------------------


def fetch_report() -> None:
    """A blocking call inside a library: the user's line is here, not in subprocess.py."""
    subprocess.run(["sleep", "0.5"], check=True)


def crunch() -> None:
    """Pure-Python CPU work on the loop."""
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:
        pass


def wait_reply() -> None:
    """A blocking wait on the loop."""
    time.sleep(0.6)


def hold_gil() -> int:
    """One long C call in a pool thread: holds the GIL throughout."""
    return sum(range(60_000_000))


def collect_now() -> int:
    """A full collection of many reference cycles on the loop."""
    return gc.collect()


def native_hold() -> int:
    """One long C call on the loop itself: no Python thread runs until it returns."""
    return sum(range(100_000_000))


def stuck() -> None:
    """A loop stuck far longer than anyone waits (3 s here, 'for good' as far as reports go)."""
    time.sleep(3.0)


@dataclass
class Truth:
    """What really happened: (function, seconds, cause) per culprit, and the block's span."""

    culprits: list[tuple[str, float, str]] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0


def _timed(fn: Callable[[], Any], cause: str, truth: Truth) -> None:
    started = time.perf_counter()
    fn()
    truth.culprits.append((fn.__name__, time.perf_counter() - started, cause))


async def case_library_wait(truth: Truth) -> None:
    _timed(fetch_report, "wait", truth)


async def case_back_to_back(truth: Truth) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.call_soon(_timed, crunch, "cpu", truth)
    loop.call_soon(_timed, wait_reply, "wait", truth)
    loop.call_soon(done.set)
    await done.wait()


async def case_gil_thread(truth: Truth) -> None:
    from loopwatch.occupant import run_timed  # what loopwatch's pools run: names the worker

    def timed() -> None:
        started = time.perf_counter()
        run_timed("parser", hold_gil, (), {})
        truth.culprits.append(("hold_gil", time.perf_counter() - started, "gil"))

    # A real pool: its thread stays after the call, as in any service (ends with the run).
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pool")
    await asyncio.get_running_loop().run_in_executor(pool, timed)


def prepare_gc() -> None:
    """Make the garbage before any tool watches: the making is not the stall under test."""
    gc.disable()
    cycles = []
    for _ in range(1_500_000):
        a: list[object] = []
        a.append([a])
        cycles.append(a)
    del cycles


async def case_gc(truth: Truth) -> None:
    try:
        _timed(collect_now, "gc", truth)
    finally:
        gc.enable()


async def case_native_loop(truth: Truth) -> None:
    _timed(native_hold, "cpu", truth)


async def case_stuck(truth: Truth) -> None:
    _timed(stuck, "wait", truth)


CASES = {
    "library_wait": case_library_wait,
    "back_to_back": case_back_to_back,
    "gil_thread": case_gil_thread,
    "gc": case_gc,
    "native_loop": case_native_loop,
    "stuck": case_stuck,
}


# --- the tools: start, stop, and what they reported, normalised ----------------------


@dataclass
class Report:
    """One report of a tool: its culprit text, seconds, cause (when it has one), when."""

    culprit: str
    seconds: float
    cause: str | None = None
    at: float = 0.0  # perf_counter() when the harness first saw it


class Tool:
    """A watching tool behind one interface."""

    async def start(self) -> None:
        """Start watching the running loop."""

    async def stop(self) -> list[Report]:
        """Stop watching; every report it made."""
        return []


class Seen:
    """Times when reports first became visible, polled from a thread (the loop may be stuck)."""

    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            while len(self.times) < self._count():
                self.times.append(time.perf_counter())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, i: int) -> float:
        return self.times[i] if i < len(self.times) else time.perf_counter()


class Loopwatch(Tool):
    async def start(self) -> None:
        import loopwatch

        # Each stall as loopwatch hands it over (on its watchdog's thread, at once).
        self.events: list[Any] = []
        self._seen = Seen(lambda: len(self.events))
        self._watch = loopwatch.watch(
            stall_threshold=THRESHOLD_S, dump_after=0.5, on_stall=self.events.append
        )
        await self._watch.__aenter__()

    async def stop(self) -> list[Report]:
        await self._watch.__aexit__(None, None, None)
        self._seen.close()
        reports = []
        for i, event in enumerate(self.events):
            at = self._seen.at(i)
            if event.ongoing:
                reports.append(Report(event.culprit, 0.0, event.cause, at))
                continue
            for c in event.culprits:
                reports.append(Report(c.culprit, c.seconds, c.cause, at))
        return reports


class LoopSentry(Tool):
    async def start(self) -> None:
        from loopsentry import LoopSentry as Sentry

        self._dir = tempfile.mkdtemp()
        self._sentry = Sentry(base_dir=self._dir, threshold=THRESHOLD_S)
        self._sentry.start()
        self._seen = Seen(self._lines)

    def _lines(self) -> int:
        return sum(
            p.read_bytes().count(b"\n") for p in Path(self._dir).rglob("*.jsonl") if p.exists()
        )

    async def stop(self) -> list[Report]:
        self._sentry.stop()
        self._seen.close()
        events = [
            json.loads(line)
            for p in Path(self._dir).rglob("*.jsonl")
            for line in p.read_text().splitlines()
        ]
        reports: list[Report] = []
        for i, event in enumerate(events):
            if event["type"] == "block_started":
                reports.append(Report(event.get("trigger", "?"), 0.0, None, self._seen.at(i)))
            elif event["type"] == "block_resolved" and reports:
                reports[-1].seconds = float(event["duration_current"])
        return reports


class Pyleak(Tool):
    async def start(self) -> None:
        from pyleak import no_event_loop_blocking

        self._times: list[float] = []
        handler = logging.Handler()
        handler.emit = lambda record: self._times.append(time.perf_counter())  # type: ignore[method-assign]
        logger = logging.getLogger("pyleak-bench")
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        self._cm = no_event_loop_blocking(
            action="warn", logger=logger, threshold=THRESHOLD_S, check_interval=0.01
        )
        await self._cm.__aenter__()

    async def stop(self) -> list[Report]:
        detector = self._cm.detector  # type: ignore[attr-defined]
        await self._cm.__aexit__(None, None, None)
        reports = []
        for i, block in enumerate(detector.detected_blocks):
            frame = block.blocking_stack[-1] if block.blocking_stack else None
            culprit = f"{frame.filename}:{frame.lineno} {frame.name}" if frame else "?"
            at = self._times[i] if i < len(self._times) else time.perf_counter()
            reports.append(Report(culprit, block.duration, None, at))
        return reports


class Aiocop(Tool):
    async def start(self) -> None:
        import aiocop

        self._events: list[tuple[float, Any]] = []
        aiocop.patch_audit_functions()
        aiocop.start_blocking_io_detection(trace_depth=20)
        aiocop.detect_slow_tasks(
            threshold_ms=THRESHOLD_S * 1000,
            on_slow_task=lambda e: self._events.append((time.perf_counter(), e)),
        )
        aiocop.activate()

    async def stop(self) -> list[Report]:
        import aiocop

        aiocop.deactivate()
        reports = []
        for at, event in self._events:
            if not event.exceeded_threshold:
                continue
            if event.cpu_stack_samples:
                culprit = event.cpu_stack_samples[0]["entry_point"]
            elif event.blocking_events:
                culprit = event.blocking_events[0]["entry_point"]
            else:
                culprit = "?"
            reports.append(Report(culprit, event.elapsed_ms / 1000, event.reason, at))
        return reports


class Nothing(Tool):
    """No tool: the baseline of the overhead column."""


TOOLS: dict[str, type[Tool]] = {
    "loopwatch": Loopwatch,
    "loopsentry": LoopSentry,
    "pyleak": Pyleak,
    "aiocop": Aiocop,
    "none": Nothing,
}


PREPARE = {"gc": prepare_gc}


async def run_case(tool_name: str, case_name: str) -> dict[str, Any]:
    PREPARE.get(case_name, lambda: None)()
    tool = TOOLS[tool_name]()
    await tool.start()
    await asyncio.sleep(0.3)
    truth = Truth()
    truth.started = time.perf_counter()
    await CASES[case_name](truth)
    truth.ended = time.perf_counter()
    await asyncio.sleep(0.5)  # let every tool see the end
    reports = await tool.stop()
    return {
        "tool": tool_name,
        "case": case_name,
        "truth": asdict(truth),
        "reports": [asdict(r) for r in reports],
    }


async def idle_cpu(tool_name: str, seconds: float = 10.0) -> dict[str, Any]:
    """Process CPU seconds per wall second with the tool watching an idle loop."""
    tool = TOOLS[tool_name]()
    await tool.start()
    await asyncio.sleep(0.5)
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    share = (time.process_time() - cpu) / (time.perf_counter() - wall)
    await tool.stop()
    return {"tool": tool_name, "case": "idle", "cpu_share": share}


def main() -> None:
    tool_name, case_name = sys.argv[1], sys.argv[2]
    logging.basicConfig(level=logging.CRITICAL)
    sys.setswitchinterval(0.001)  # the daemon's default
    if case_name == "idle":
        result = asyncio.run(idle_cpu(tool_name))
    else:
        result = asyncio.run(run_case(tool_name, case_name))
    sys.stdout.flush()
    os.write(1, (json.dumps(result) + "\n").encode())


if __name__ == "__main__":
    main()
