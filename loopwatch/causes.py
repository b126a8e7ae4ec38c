"""Evidence of why a loop is stuck: thread CPU clocks, run-queue waits, GC time.

Every reading here is cheap (a clock read ~0.5 us, a ``schedstat`` read ~5 us) and is
taken by the watchdog thread only: once per healthy wake for a baseline, and once per
sample while a stall lasts. ``classify`` turns the difference of two readings into
one of the causes of DESIGN.md.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from time import perf_counter
from types import FrameType
from typing import Any, Literal

from loopwatch import frames

Cause = Literal["cpu", "wait", "gil", "gc", "starved", "unknown"]
# A share of a sample interval above this is "most of it".
MOST = 0.5
# Collections this long keep the stack that triggered them.
LONG_GC_S = 0.01


def thread_cpu_s(ident: int) -> float | None:
    """CPU seconds the thread has used, None when it is gone."""
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (OSError, OverflowError):
        return None


def schedstat(native_id: int, pid: int | str = "self") -> tuple[float, float] | None:
    """A thread's seconds on a CPU and waiting for one (``schedstat``); None if unknown."""
    try:
        with open(f"/proc/{pid}/task/{native_id}/schedstat", "rb") as f:  # noqa: PTH123 - hot
            return _parse_schedstat(f.read())
    except (OSError, ValueError):
        return None


def _parse_schedstat(raw: bytes) -> tuple[float, float]:
    """(seconds on a CPU, seconds waiting for one) of a ``schedstat`` file's text."""
    on_cpu, waiting = raw.split()[:2]
    return int(on_cpu) / 1e9, int(waiting) / 1e9


def thread_state(stat: bytes) -> bytes | None:
    """The state letter of a thread's ``stat`` file text; None where it holds none.

    ``R`` is on a CPU or waiting for one. The name before it may hold any byte, ``)`` too.
    """
    end = stat.rfind(b")")
    letter = stat[end + 2 : end + 3] if end >= 0 else b""
    return letter or None


def run_queue_wait_s(native_id: int) -> float | None:
    """Seconds the thread spent runnable but not running (``schedstat``); None if unknown."""
    found = schedstat(native_id)
    return None if found is None else found[1]


class GcTracker:
    """Times garbage collections through ``gc.callbacks`` (any thread's: they hold the GIL)."""

    def __init__(self, keep: int = 256) -> None:
        self._done: deque[tuple[float, float, int]] = deque(maxlen=keep)
        self._started: tuple[float, int] | None = None
        self._frame: FrameType | None = None
        self._thread = 0
        # Where the long collections ran: (start, end, stack, thread ident) of those over
        # LONG_GC_S. The thread names the worker when a pool thread's allocations set the
        # collection off (a big json.loads on a thread).
        self.long: deque[tuple[float, float, list[str], int]] = deque(maxlen=16)

    def install(self) -> None:
        """Start timing collections."""
        with _TRACKERS_LOCK:
            if not _TRACKERS:
                gc.callbacks.append(_on_gc)  # one callback however many watch
            _TRACKERS[id(self)] = self

    def uninstall(self) -> None:
        """Stop timing collections."""
        with _TRACKERS_LOCK:
            if _TRACKERS.pop(id(self), None) is not None and not _TRACKERS:
                with contextlib.suppress(ValueError):
                    gc.callbacks.remove(_on_gc)  # nothing watches: nothing runs per collection

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        generation = info["generation"]
        if not generation:
            # The youngest generation holds a few hundred objects at most: never long
            # enough to matter, and under load it is collected thousands of times a second.
            return
        if phase == "start":
            self._started = (perf_counter(), generation)
            self._thread = threading.get_ident()
            # The frame that allocated (or called gc.collect): it runs on during the
            # collection, and names the code of a long one once it is over. None at
            # interpreter exit, when a collection may run with no Python frame at all.
            try:
                self._frame = sys._getframe(1)
            except ValueError:
                self._frame = None
        elif self._started is not None:
            start, generation = self._started
            end = perf_counter()
            self._started = None
            self._done.append((start, end, generation))
            if end - start >= LONG_GC_S:
                self.long.append((start, end, frames.frame_lines(self._frame), self._thread))
            self._frame = None

    def stack_during(self, start: float, end: float) -> tuple[list[str], int] | None:
        """The stack and thread that set off the longest collection within ``[start, end]``."""
        found = [
            (e - s, (stack, thread))
            for s, e, stack, thread in list(self.long)
            if s < end and e > start
        ]
        if found:
            return max(found, key=lambda item: item[0])[1]
        started, frame = self._started, self._frame
        if started is not None and frame is not None:
            # One still going (it ends after this look): the frame that set it off.
            return frames.frame_lines(frame), self._thread
        return None

    def overlap(self, start: float, end: float) -> tuple[float, int]:
        """GC seconds within ``[start, end]`` and the oldest generation collected then."""
        total, oldest = 0.0, -1
        spans = list(self._done)
        if self._started is not None:
            spans.append((self._started[0], end, self._started[1]))
        for gc_start, gc_end, generation in spans:
            seconds = min(end, gc_end) - max(start, gc_start)
            if seconds > 0:
                total += seconds
                oldest = max(oldest, generation)
        return total, oldest


# The trackers of the watchdogs running now. gc.callbacks holds one function for all of
# them, there only while some watchdog runs.
_TRACKERS: dict[int, GcTracker] = {}
_TRACKERS_LOCK = threading.Lock()


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if not info["generation"]:
        return  # the youngest: see GcTracker._on_gc (thousands a second under load)
    for tracker in list(_TRACKERS.values()):
        tracker._on_gc(phase, info)


class RunQueue:
    """A thread's run-queue wait and state, read through its ``/proc`` files kept open.

    A read is then ~1 us (opening the file each time: ~35 us), cheap enough for every
    look: a figure refreshed less often carried the queueing from before a stall into it.
    A file is opened at its first read, not here: opening lets go of the GIL, and a
    reading takes its clocks before it does. Owned by the thread that reads it.
    """

    __slots__ = ("_fds", "native_id")

    def __init__(self, native_id: int) -> None:
        self.native_id = native_id
        self._fds: dict[str, int | None] | None = {}  # None once closed

    def wait_s(self) -> float | None:
        """Seconds the thread spent runnable but not running; None if unknown."""
        raw = self._read("schedstat")
        try:
            return None if raw is None else _parse_schedstat(raw)[1]
        except ValueError:
            return None

    def runnable(self) -> bool | None:
        """Whether the thread is on a CPU or waiting for one now; None if unknown.

        The kernel adds a run-queue wait to ``schedstat`` only when the thread runs
        again: until then a thread waiting for a CPU has the figures of a blocked one.
        Its state tells them apart.
        """
        raw = self._read("stat")
        state = None if raw is None else thread_state(raw)
        return None if state is None else state == b"R"

    def _read(self, name: str) -> bytes | None:
        fds = self._fds
        if fds is None:
            return None
        if name not in fds:
            fds[name] = None
            # No procfs, or no descriptor left: no figure, not an error.
            with contextlib.suppress(OSError):
                fds[name] = os.open(
                    f"/proc/self/task/{self.native_id}/{name}", os.O_RDONLY | os.O_CLOEXEC
                )
        fd = fds[name]
        if fd is None:
            return None
        try:
            return os.pread(fd, 512, 0)
        except OSError:
            return None  # the thread has ended

    def __del__(self) -> None:
        # A pool thread's, kept in its thread-local storage: closed as the thread ends.
        self.close()

    def close(self) -> None:
        """Close the files; later reads are None."""
        fds, self._fds = self._fds, None
        for fd in (fds or {}).values():
            if fd is not None:
                os.close(fd)


@dataclass(frozen=True)
class Reading:
    """One look at the process, by the watchdog thread."""

    at: float
    loop_cpu_s: float
    loop_queue_s: float | None
    thread_cpu_s: dict[int, float] = field(default_factory=dict)
    # The reading thread's own run-queue wait: a watchdog woken late because the host did
    # not run it, not because another thread held the GIL.
    own_queue_s: float | None = None
    # The loop thread on a CPU or waiting for one when read (``RunQueue.runnable``);
    # None when not read (a healthy wake's baseline) or unknown.
    loop_runnable: bool | None = None


def waited_s(before: float | None, after: float | None) -> float:
    """Run-queue seconds added between two figures of one thread (0 if either is unknown)."""
    if before is None or after is None:
        return 0.0
    return max(0.0, after - before)


def own_wait_s(before: Reading, after: Reading) -> float:
    """Seconds the reading thread waited for a CPU between two readings (0 if unknown)."""
    return waited_s(before.own_queue_s, after.own_queue_s)


def read(
    loop_ident: int,
    queue: RunQueue | None,
    skip: int,
    own: RunQueue | None = None,
    *,
    state: bool = False,
) -> Reading:
    """The loop thread's CPU and run-queue wait, and every other thread's CPU but ``skip``'s.

    ``own``: the reading thread's run-queue wait (it is running, so the kernel has added
    the wait that woke it late), read last with the loop's. ``state``: whether the loop
    thread is runnable too (a look during a stall, not a healthy wake's baseline).

    The time and the clocks come first, the ``schedstat`` read last: it is a system call,
    which lets go of the GIL, and native code may hold it from then on. The gap then
    falls into the next interval, as it should, not between this reading's parts.
    """
    at = perf_counter()
    loop_cpu = thread_cpu_s(loop_ident) or 0.0
    others = {}
    for thread in threading.enumerate():
        ident = thread.ident
        if ident is None or ident in (loop_ident, skip):
            continue
        cpu = thread_cpu_s(ident)
        if cpu is not None:
            others[ident] = cpu
    loop_queue = None if queue is None else queue.wait_s()
    runnable = queue.runnable() if state and queue is not None else None
    own_queue = None if own is None else own.wait_s()
    return Reading(at, loop_cpu, loop_queue, others, own_queue, runnable)


@dataclass(frozen=True)
class Verdict:
    """Why the loop made no progress over one interval, with the evidence."""

    cause: Cause
    loop_cpu_s: float
    gc_s: float = 0.0
    gc_generation: int = -1
    queue_wait_s: float = 0.0
    holder: int | None = None  # the thread that held the GIL (cause "gil")
    holder_cpu_s: float = 0.0


# The loop thread's CPU share of an interval it was runnable throughout that makes it
# "cpu" (its code ran) rather than "starved" (the host did not run it).
BUSY_SHARE = 0.1
# The GIL holder's CPU share of the interval that names it: not "most", because on a
# loaded host the holder itself waits for a CPU while it holds the GIL (measured beside
# two CPU hogs on 2 cores: a 1.3 s C call in a thread got ~40% of the interval's CPU).
HOLDER_SHARE = 0.2


def busiest_thread(before: Reading, after: Reading) -> tuple[int | None, float]:
    """The thread other than the loop's that used the most CPU between two readings."""
    holder, holder_cpu = None, 0.0
    for ident, cpu in after.thread_cpu_s.items():
        used = cpu - before.thread_cpu_s.get(ident, 0.0)  # new threads: all of it
        if used > holder_cpu:
            holder, holder_cpu = ident, used
    return holder, holder_cpu


def classify(
    before: Reading, after: Reading, gc_s: float, gc_generation: int, *, watchdog_late: bool
) -> Verdict:
    """The cause of an interval between two readings.

    ``watchdog_late``: the watchdog itself woke much later than it asked to, so some
    thread held the GIL for most of the interval.
    """
    span = max(after.at - before.at, 1e-9)
    loop_cpu = max(0.0, after.loop_cpu_s - before.loop_cpu_s)
    queue = waited_s(before.loop_queue_s, after.loop_queue_s)
    holder, holder_cpu = busiest_thread(before, after)
    evidence: dict[str, Any] = {"loop_cpu_s": loop_cpu, "queue_wait_s": queue}
    if gc_s >= MOST * span:
        return Verdict("gc", gc_s=gc_s, gc_generation=gc_generation, **evidence)
    if loop_cpu >= MOST * span:
        return Verdict("cpu", **evidence)
    # The kernel adds a wait to the figure when the thread runs again: a wait that began
    # before the interval may land in it, but never more of it than the interval holds.
    waited = min(queue, span)
    # Another thread ran while the loop thread did not, and the watchdog could not run
    # either: that thread held the GIL. (A thread in native code that released the GIL,
    # or a pure-Python one handing it over every switch interval, leaves the watchdog
    # on time: then the loop thread was blocked in a call of its own, "wait".)
    held = watchdog_late and holder is not None and holder_cpu >= HOLDER_SHARE * span
    # Runnable when looked at, and not seen blocked before: what the figures do not show
    # yet was a wait for a CPU (beside two hogs, a spin's first look, 3 ms after a
    # baseline, read ``wait`` and was charged the stall's first 51 ms). Not where a
    # thread held the GIL: the loop, waiting for it, wakes every switch interval.
    runnable = not held and after.loop_runnable and before.loop_runnable is not False
    if loop_cpu + waited >= MOST * span or runnable:
        # Runnable throughout, on a CPU or waiting for one, never blocked. Running code
        # for a good part of it: a callback that computes, on a host that shares its
        # CPUs (cpu); hardly at all: the host did not run it (starved).
        return Verdict("cpu" if loop_cpu >= BUSY_SHARE * span else "starved", **evidence)
    if held:
        return Verdict("gil", holder=holder, holder_cpu_s=holder_cpu, **evidence)
    if watchdog_late:
        return Verdict("unknown", **evidence)
    return Verdict("wait", **evidence)
