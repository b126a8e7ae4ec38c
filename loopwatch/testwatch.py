"""TestWatcher: the stall watchdog on one test's loop at a time, for a whole test session.

Lighter than ``Watcher`` and invisible to the test: no timer on the loop (``beats``), no
metrics (prometheus-client is not imported), nothing logged. One watchdog thread, parked
between tests by a ``WatchdogHost``. Asyncio loops (any runner: pytest-asyncio, anyio,
unittest), uvloop and trio.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Callable
from typing import Any, Literal

from loopwatch.beats import BusyBeat, SelectorBeat, TimerBeat, TrioBeat
from loopwatch.host import WatchdogHost
from loopwatch.occupant import Occupant
from loopwatch.stall import StallEvent
from loopwatch.watchdog import StallWatchdog

Runner = Literal["asyncio", "trio"]


class TestWatcher:
    """Watches the loop running the caller, from ``start`` to ``stop`` (both on its thread)."""

    __test__ = False  # not a test class, whatever pytest's collection says

    def __init__(
        self, stall_threshold: float, dump_after: float, on_stall: Callable[[StallEvent], None]
    ) -> None:
        self.stall_threshold = stall_threshold
        self.occupant = Occupant()
        self.host = WatchdogHost()
        self.watchdog = StallWatchdog(
            BusyBeat(stall_threshold),  # each start brings its loop's own
            None,
            self.occupant,
            dump_after_s=dump_after,
            emit=_silent,
            on_stall=on_stall,
            host=self.host,
        )
        self._beat: BusyBeat | TimerBeat | None = None
        # Between tests the watchdog's thread stays on an idle heartbeat (one that never
        # beats late): the next test retargets it, with no hand-over between threads.
        self._idle = _Idle(stall_threshold)

    @property
    def stalls(self) -> int:
        """Stalls reported so far."""
        return self.watchdog.stalls

    def start(self, code: Callable[..., Any] | None = None) -> Runner | None:
        """Watch the loop running the caller; which kind it is, None when none is known.

        ``code``: what a blind stall (the GIL held throughout) is put on.
        """
        loop: asyncio.AbstractEventLoop | None = None
        beat: BusyBeat | TimerBeat | None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            beat = _trio_beat(self.stall_threshold)
            runner: Runner = "trio"
        else:
            beat = SelectorBeat.on(loop, self.stall_threshold) or TimerBeat(
                loop, self.stall_threshold
            )
            runner = "asyncio"
        if beat is None:
            return None
        self._beat = beat
        self.occupant.last = ("", code, time.perf_counter(), math.inf)
        if self.watchdog.running:
            self.watchdog.retarget(loop, beat)
        else:
            self.watchdog.start(loop, heartbeat=beat)
        return runner

    def stop(self) -> None:
        """Stop watching: a step still going ends now, and a stall it made is reported.

        With no stall to report the watchdog's thread is left running, idle; with one,
        it is stopped, which reports it before this returns.
        """
        beat, self._beat = self._beat, None
        if beat is None:
            return
        beat.finish()
        try:
            if self.watchdog.unreported():
                self.watchdog.stop()
            else:
                self.watchdog.retarget(None, self._idle)
        finally:
            beat.detach()
            self.occupant.last = ("", None, 0.0, 0.0)

    def close(self) -> None:
        """End the watchdog's thread and its native dump (at the session's end)."""
        self.watchdog.close()
        self.host.close()


class _Idle:
    """The heartbeat of no loop: always just beaten, never late."""

    resolution_s = 0.0
    last_long_lag = (0.0, 0.0)

    def __init__(self, stall_threshold_s: float) -> None:
        self.stall_threshold_s = stall_threshold_s

    @property
    def last_beat(self) -> float:
        """Now."""
        return time.perf_counter()


def _trio_beat(stall_threshold: float) -> TrioBeat | None:
    """The beat of the trio run on this thread, None when there is none."""
    trio = sys.modules.get("trio")
    if trio is None or not trio.lowlevel.in_trio_task():
        return None
    return TrioBeat(stall_threshold)


def _silent(_: dict[str, Any]) -> None:
    """No log line: the test's verdict reports the stall."""
