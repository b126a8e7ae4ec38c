"""StallWatchdog: a thread that sees a stuck loop while it is stuck and names the culprit."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path
from time import perf_counter
from typing import Any, Protocol

import structlog

from daemon.probe import LagProbe
from daemon.throttle import LogThrottle

log = structlog.get_logger("loopwatch.watchdog")

STACK_LIMIT = 30
# Repeats of the same culprit within this window become one summary line.
AGGREGATE_WINDOW_S = 10.0
# How often a stall in progress is checked for its end (stall lengths are measured by
# the probe on the loop, so this only bounds how late the log line comes).
STALL_POLL_S = 0.01

_DAEMON_DIR = Path(__file__).parent
# Our own plumbing and asyncio's runner sit below every culprit: cut them from stacks.
_PLUMBING = (
    str(Path(asyncio.__file__).parent) + "/",
    "/aiorun/",
    "/selectors.py",
    "<frozen runpy>",
    "/runpy.py",
    str(_DAEMON_DIR) + "/",
)
_CULPRITS_IN_DAEMON = (str(_DAEMON_DIR / "workloads.py"), str(_DAEMON_DIR / "executors.py"))


class Occupant:
    """Which worker's call runs on the loop thread right now (set by on-loop strategies)."""

    __slots__ = ("worker",)

    def __init__(self) -> None:
        self.worker: str | None = None


class CounterLike(Protocol):
    """What the watchdog needs of a counter."""

    def inc(self, amount: float = 1) -> None: ...  # noqa: D102


class GaugeFn(Protocol):
    """What the watchdog needs of a gauge."""

    def set_function(self, f: Any) -> None: ...  # noqa: D102


def _is_plumbing(filename: str) -> bool:
    if filename.startswith(_CULPRITS_IN_DAEMON):
        return False
    return any(part in filename for part in _PLUMBING)


def capture_stack(thread_id: int, limit: int = STACK_LIMIT) -> list[str]:
    """The thread's stack as innermost-last ``file:line function`` lines, plumbing cut."""
    frame = sys._current_frames().get(thread_id)
    frames: list[str] = []
    depth = 0
    while frame is not None and depth < 256:
        code = frame.f_code
        if not _is_plumbing(code.co_filename):
            frames.append(f"{code.co_filename}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
        depth += 1
    frames.reverse()
    return frames[-limit:]


class StallWatchdog:
    """Watches the probe's heartbeat from a thread of its own.

    Healthy, it wakes about once per ``resolution + stall_threshold`` and takes the
    GIL for microseconds. When the heartbeat is ``stall_threshold`` overdue it samples
    the loop thread's stack once, follows the stall to its end, then logs ``stall``
    and counts it. The stall gauge is computed at scrape time, so it is live.
    """

    def __init__(
        self,
        probe: LagProbe,
        stall_gauge: GaugeFn,
        stalls_counter: CounterLike,
        occupant: Occupant,
        *,
        aggregate_window_s: float = AGGREGATE_WINDOW_S,
    ) -> None:
        self._probe = probe
        self._stall_gauge = stall_gauge
        self._stalls = stalls_counter
        self._occupant = occupant
        self._throttle = LogThrottle(self._emit, aggregate_window_s, value_name="duration")
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop_thread_id = 0
        self.stalls = 0

    def start(self) -> None:
        """Start watching the calling thread's loop (call from the loop thread)."""
        self._loop_thread_id = threading.get_ident()
        self._stopped.clear()
        self._stall_gauge.set_function(self.current_stall_s)
        self._thread = threading.Thread(target=self._run, name="loopwatch-watchdog", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop the thread; a stall still in progress and held-back repeats are logged."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self._throttle.flush(force=True)
        self._stall_gauge.set_function(lambda: 0.0)

    def current_stall_s(self) -> float:
        """Length of the stall in progress, 0 when the loop is responsive."""
        if self._stopped.is_set():
            return 0.0
        overdue = perf_counter() - self._probe.last_beat - self._probe.resolution_s
        return overdue if overdue >= self._probe.stall_threshold_s else 0.0

    def _run(self) -> None:
        while not self._stopped.is_set():
            beat = self._probe.last_beat
            threshold = self._probe.stall_threshold_s
            overdue = perf_counter() - beat - self._probe.resolution_s
            if overdue < threshold:
                self._throttle.flush()
                self._stopped.wait(threshold - overdue + 0.001)
                continue
            self._follow_stall(beat)

    def _follow_stall(self, beat: float) -> None:
        worker = self._occupant.worker
        stack = capture_stack(self._loop_thread_id)
        if self._probe.last_beat != beat:
            # The loop came back while we looked: the stack may be of what came after.
            stack, worker = [], None
        while self._probe.last_beat == beat and not self._stopped.wait(STALL_POLL_S):
            pass
        ongoing = self._probe.last_beat == beat
        long_beat, long_lag = self._probe.last_long_lag
        if not ongoing and long_beat == beat:
            duration = long_lag
        else:
            duration = perf_counter() - beat - self._probe.resolution_s
        self._record(duration, stack, worker, ongoing=ongoing)

    def _record(
        self, duration: float, stack: list[str], worker: str | None, *, ongoing: bool
    ) -> None:
        self.stalls += 1
        self._stalls.inc()
        culprit = stack[-1] if stack else "unknown"
        fields: dict[str, Any] = {
            "duration": round(duration, 4),
            "worker": worker,
            "culprit": culprit,
            "stack": stack,
        }
        if ongoing:
            fields["ongoing"] = True
        self._throttle.offer((worker, culprit), fields, value=duration)
        if ongoing:
            self._throttle.flush(force=True)

    @staticmethod
    def _emit(fields: dict[str, Any]) -> None:
        log.warning("stall", **fields)
