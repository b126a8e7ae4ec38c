"""WatchdogHost: one thread that runs a watchdog per loop, parked between loops.

A test suite runs a short-lived loop per test: a thread started and joined for each would
cost more than the test. The host's thread runs the watchdog while a loop lives, and
between loops keeps the watchdog's native dump armed (a test may hold the GIL before
the thread is back on it). The pytest plugin owns one for its session.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loopwatch.watchdog import StallWatchdog

# How often a parked thread with no dump to keep armed looks whether it has work.
IDLE_WAKE_S = 1.0


class WatchdogHost:
    """Runs ``StallWatchdog.run`` for each ``start``; parks its thread between them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._work = threading.Event()
        self._parked = threading.Event()
        self._parked.set()
        self._next: StallWatchdog | None = None
        self._last: StallWatchdog | None = None
        self._closing = False
        self._thread: threading.Thread | None = None

    def run(self, watchdog: StallWatchdog) -> None:
        """Run ``watchdog`` on the host's thread until it is stopped (returns at once)."""
        with self._lock:
            if self._closing:
                raise RuntimeError("the watchdog host is closed")
            self._next = watchdog
            self._parked.clear()
            self._work.set()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._main, name="loopwatch-watchdog", daemon=True
                )
                self._thread.start()

    def wait_parked(self, timeout_s: float) -> bool:
        """Wait until the thread has left the watchdog it ran (that watchdog was stopped)."""
        return self._parked.wait(timeout_s)

    def close(self, timeout_s: float = 1.0) -> None:
        """End the thread; a watchdog still running must have been stopped first."""
        with self._lock:
            self._closing = True
            self._work.set()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)

    def _main(self) -> None:
        while True:
            self._work.wait(self._rearm_parked())
            with self._lock:
                if self._closing:
                    self._parked.set()
                    return
                watchdog, self._next = self._next, None
                self._work.clear()
            if watchdog is None:
                continue  # woken to re-arm the dump of the last one
            watchdog.run()
            self._last = watchdog
            self._parked.set()

    def _rearm_parked(self) -> float:
        """Keep the last watchdog's dump armed while parked; how long until next time."""
        last = self._last
        every = last.keep_dump_armed() if last is not None else None
        return every if every is not None else IDLE_WAKE_S
