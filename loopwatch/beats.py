"""Heartbeats that put nothing on the loop's timer queue, for loops a test owns.

A lag probe is a timer on the loop. On a loop whose clock is virtual (aiostream's test
loop, looptime's) that timer is a step of the clock the test asserts on: watching would
change what the test sees. These heartbeats read the loop's own rhythm instead: the loop
is busy from the moment it leaves its wait (an asyncio loop's selector, the start of a
trio task step) to the moment it goes back to it. The watchdog reads them as it reads a
probe (``loopwatch.watchdog.Heartbeat``): a loop busy for longer than the threshold is
stalled, and its end is known exactly, on the loop's thread.

Only a loop with neither (uvloop polls in C) gets the timer: ``TimerBeat``.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
from collections.abc import Callable
from time import perf_counter
from typing import Any

from loopwatch.probe import LagProbe


class BusyBeat:
    """Busy since a moment or idle, written by the loop's thread, read by the watchdog's.

    Every field is one attribute store of an immutable value: no lock. Made on the loop's
    thread from inside a step, so the loop counts as busy from then on.
    """

    resolution_s = 0.0  # no timer: busy since ``last_beat`` is all the lag there is

    def __init__(self, stall_threshold_s: float) -> None:
        self.stall_threshold_s = stall_threshold_s
        self.last_long_lag: tuple[float, float] = (0.0, 0.0)
        self._busy_since: float | None = perf_counter()

    @property
    def last_beat(self) -> float:
        """When the loop was last free: now while it waits, else when its step began."""
        since = self._busy_since
        return perf_counter() if since is None else since

    def busy(self) -> None:
        """The loop left its wait (its thread)."""
        self._busy_since = perf_counter()

    def idle(self) -> None:
        """The loop goes back to its wait (its thread): a step that long was a stall."""
        since = self._busy_since
        if since is None:
            return
        self._busy_since = None
        took = perf_counter() - since
        if took >= self.stall_threshold_s:
            self.last_long_lag = (since, took)

    def finish(self) -> None:
        """Watching ends inside a step (the loop's thread): that step ends here."""
        self.idle()

    def detach(self) -> None:
        """Take back what was installed on the loop."""


class SelectorBeat(BusyBeat):
    """An asyncio loop's selector, timed: busy between one ``select`` and the next."""

    def __init__(self, selector: selectors.BaseSelector, stall_threshold_s: float) -> None:
        super().__init__(stall_threshold_s)
        self._selector = selector
        self._before = selector.__dict__.get("select")  # someone's wrapper, kept under ours
        self._on = True
        real = selector.select
        beat = self

        def select(timeout: float | None = None) -> Any:
            if not beat._on:
                return real(timeout)
            beat.idle()
            try:
                return real(timeout)
            finally:
                beat.busy()

        self._select: Callable[..., Any] = select
        selector.select = select  # type: ignore[method-assign]

    @classmethod
    def on(cls, loop: asyncio.AbstractEventLoop, stall_threshold_s: float) -> SelectorBeat | None:
        """The beat of ``loop``'s selector, None when it has none to time (uvloop)."""
        selector = getattr(loop, "_selector", None)
        if selector is None or not hasattr(selector, "__dict__"):
            return None
        try:
            return cls(selector, stall_threshold_s)
        except (AttributeError, TypeError):
            return None

    def detach(self) -> None:
        """Put the selector's ``select`` back; under another's wrapper, stay inert."""
        self._on = False
        selector = self._selector
        if selector.__dict__.get("select") is not self._select:
            return  # wrapped again since: taking ours out would take theirs too
        if self._before is None:
            # From the instance's dict itself: a Mock selector (aiostream's test loop)
            # would take ``del`` for "this attribute no longer exists".
            vars(selector).pop("select", None)
        else:
            selector.select = self._before  # type: ignore[method-assign]


class TrioBeat(BusyBeat):
    """A trio run's task steps, through its instrument API: a step is the loop busy."""

    def __init__(self, stall_threshold_s: float) -> None:
        super().__init__(stall_threshold_s)
        import trio  # noqa: PLC0415 - only under trio, which is running then

        beat = self

        class Steps(trio.abc.Instrument):
            def before_task_step(self, task: trio.lowlevel.Task) -> None:  # noqa: ARG002
                beat.busy()

            def after_task_step(self, task: trio.lowlevel.Task) -> None:  # noqa: ARG002
                beat.idle()

        self._instrument = Steps()
        self._remove = trio.lowlevel.remove_instrument
        trio.lowlevel.add_instrument(self._instrument)

    def detach(self) -> None:
        """Remove the instrument (already gone if the run has ended)."""
        with contextlib.suppress(KeyError, RuntimeError):
            self._remove(self._instrument)


class _Discard:
    """A histogram that keeps nothing: a test's lag is judged, not exported."""

    def observe(self, amount: float) -> None:
        """Drop ``amount``."""


class TimerBeat(LagProbe):
    """A lag probe's timer, for loops with no selector to time (uvloop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stall_threshold_s: float) -> None:
        super().__init__(_Discard(), min(0.01, stall_threshold_s / 5), stall_threshold_s)
        self.start(loop)

    def finish(self) -> None:
        """Watching ends inside a step: a step overdue by now ends here, as a stall."""
        now = perf_counter()
        lag = now - self.last_beat - self.resolution_s
        if lag >= self.stall_threshold_s:
            self.last_long_lag = (self.last_beat, lag)

    def detach(self) -> None:
        """Cancel the timer."""
        self.stop()
