"""LagProbe: a timer that measures how late it fires, into the event-loop-lag histogram."""

from __future__ import annotations

import asyncio
from collections import deque
from time import perf_counter
from typing import Protocol


class Observer(Protocol):
    """What the probe needs of a histogram."""

    def observe(self, amount: float) -> None:
        """Record one lag sample in seconds."""


# Recent samples kept for STATUS= and the bench: 10 s at the default 10 ms.
RECENT_SAMPLES = 1000


class LagProbe:
    """Samples event-loop lag every ``resolution_s`` with ``time.perf_counter``.

    A plain ``call_later`` callback rather than a task sleeping in a loop: no future,
    no task step per sample, so watching costs little more than the timer itself.
    Its beats are the heartbeat the stall watchdog reads from its own thread.
    """

    def __init__(self, histogram: Observer, resolution_s: float, stall_threshold_s: float) -> None:
        self._histogram = histogram
        self.resolution_s = resolution_s
        self.stall_threshold_s = stall_threshold_s
        self.recent: deque[float] = deque(maxlen=RECENT_SAMPLES)
        # Written by the loop thread, read by the watchdog thread: each a single
        # attribute store of an immutable value, so no lock is needed.
        self.last_beat = perf_counter()
        self.last_long_lag: tuple[float, float] = (0.0, 0.0)  # (beat it followed, lag)
        self._due = self.last_beat
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        # Buffers that others drain off the loop thread (OpenTelemetry's histogram, at
        # its collection): an append per sample is all the loop pays. Rarely any.
        self.buffers: tuple[deque[float], ...] = ()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start sampling on ``loop`` (call from the loop's thread)."""
        self._loop = loop
        self.last_beat = perf_counter()
        self._schedule(self.last_beat)

    def stop(self) -> None:
        """Stop sampling; the last beat stays where it was."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._loop = None

    def reconfigure(self, resolution_s: float, stall_threshold_s: float) -> None:
        """Change the sampling period and threshold now (call from the loop's thread).

        The pending sample is rescheduled at once: left due at the old, longer period it
        would look overdue by the difference, a false stall.
        """
        self.resolution_s = resolution_s
        self.stall_threshold_s = stall_threshold_s
        if self._handle is not None:
            self._handle.cancel()
            self.last_beat = now = perf_counter()
            self._schedule(now)

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.resolution_s
        self._handle = self._loop.call_later(self.resolution_s, self._sample)

    def _sample(self) -> None:
        now = perf_counter()
        lag = now - self._due
        if lag < 0.0:  # noqa: PLR1730 - max() costs a call on the hottest path
            lag = 0.0
        self._histogram.observe(lag)
        for buffer in self.buffers:
            buffer.append(lag)
        self.recent.append(lag)
        if lag >= self.stall_threshold_s:
            self.last_long_lag = (self.last_beat, lag)
        self.last_beat = now
        self._schedule(now)

    def recent_quantile(self, q: float) -> float:
        """The ``q`` quantile of the recent samples (0 when there are none)."""
        samples = sorted(self.recent)
        if not samples:
            return 0.0
        return samples[min(len(samples) - 1, int(q * len(samples)))]
