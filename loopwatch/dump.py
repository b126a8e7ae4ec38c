"""NativeDump: every thread's stack, written from C by faulthandler when the loop is stuck.

faulthandler's timer thread is a C thread: it dumps even while native code holds the
GIL and no Python thread (the watchdog included) can run. The dump goes to a pipe the
watchdog reads once it runs again, through a dump reader process when asked (which logs
it at once: ``loopwatch.dumpreader``). faulthandler has one such timer per process: a
program that uses ``dump_traceback_later`` itself should set ``dump_after = 0``.
"""

from __future__ import annotations

import contextlib
import faulthandler
import fcntl
import json
import math
import os
import re
import signal
import subprocess
import sys
from collections import deque
from time import perf_counter

from loopwatch import dumptimer, frames

# Re-arming costs ~56 us: once a second is enough, the deadline moves by at most that
# (by half of dump_after when that is shorter).
REARM_EVERY_S = 1.0
# How long a closing dump waits for its reader to end.
READER_EXIT_S = 1.0
# The signal a reader sends the loop's thread when the dump of all threads was cut before
# it: faulthandler, registered for it with all_threads=False, writes that thread's own
# stack from its handler, in C, while native code holds the GIL. Reader mode (the
# daemon) only: a library registers no signal.
SELF_DUMP_SIGNAL = signal.SIGRTMIN + 6
# A thread's header line in a dump (MULTILINE: also found in a whole dump's text).
THREAD_HEADER = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-f]+)", re.MULTILINE)
_CUT = re.compile(r"^\.\.\.$", re.MULTILINE)
# The header of a one-thread dump (faulthandler's signal handler, ``all_threads=False``).
SELF_HEADER = "Stack (most recent call first):"
_FRAME = re.compile(r'^\s+File "(.*)", line (\d+) in (.*)$')


class NativeDump:
    """Arms faulthandler to dump after ``after_s`` without a re-arm, and reads dumps back.

    With ``reader_for`` (the loop thread's ident), a dump reader process
    (``loopwatch.dumpreader``) sits on the pipe: it logs a ``stall`` line from the dump
    at once, while no Python thread here can run, and passes the dump on to us.
    """

    def __init__(
        self, after_s: float, reader_for: int | None = None, native_id: int | None = None
    ) -> None:
        self.after_s = after_s
        self.rearm_s = min(REARM_EVERY_S, after_s / 2)
        self._read_fd, self._write_fd = os.pipe()
        self.reader: subprocess.Popen[bytes] | None = None
        self._self_dump = False
        if reader_for is not None:
            self.reader = self._start_reader(reader_for, native_id)
        for fd in (self._read_fd, self._write_fd):
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            # Never block: not the C writer on a full pipe, not the watchdog reading.
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        self._armed_at = -math.inf
        self.held = dumptimer.claim(self)
        # When the dumps armed lately fire (perf_counter): a re-arm after a dump, before
        # it was read, must not pass for the time it was written.
        self._dues: deque[float] = deque(maxlen=8)
        self._buffer = b""
        self._buffer_due = math.inf  # when the dump in the buffer was written

    def _start_reader(
        self, loop_thread: int, native_id: int | None
    ) -> subprocess.Popen[bytes] | None:
        """Start the reader: the dump pipe is its stdin, its stdout a pipe to us."""
        to_reader, from_dump = self._read_fd, self._write_fd
        from_reader, to_us = os.pipe()
        deadline = self.after_s + self.rearm_s
        try:
            reader = subprocess.Popen(
                [sys.executable, "-m", "loopwatch.dumpreader", str(loop_thread),
                 f"{deadline:g}", json.dumps(frames.declared()), str(native_id or 0),
                 str(int(SELF_DUMP_SIGNAL))],
                stdin=to_reader, stdout=to_us, close_fds=True,
            )  # fmt: skip
        except OSError:
            os.close(from_reader)
            os.close(to_us)
            return None  # no reader: the watchdog still reads the dump when it runs again
        os.close(to_reader)
        os.close(to_us)
        self._read_fd, self._write_fd = from_reader, from_dump
        # Beside 100 other threads the loop's is cut from the dump: the reader then asks
        # the loop thread for its own stack, into the same pipe.
        faulthandler.register(SELF_DUMP_SIGNAL, file=from_dump, all_threads=False)
        self._self_dump = True
        return reader

    def keep_armed(self) -> None:
        """Push the dump's deadline forward (at most once a second: it is not free)."""
        now = perf_counter()
        if now - self._armed_at >= self.rearm_s:
            # + one re-arm period: the deadline was set up to that long before the stall.
            dumptimer.arm(self, self.after_s + self.rearm_s, self._write_fd)
            self._armed_at = now
            self._dues.append(now + self.after_s + self.rearm_s)

    def disarm(self) -> None:
        """Cancel the pending dump; the next ``keep_armed`` arms it again."""
        dumptimer.cancel(self)
        self._armed_at = -math.inf

    def take(self, start: float = -math.inf, end: float = math.inf) -> str | None:
        """The dump written from ``start`` to ``end`` (perf_counter), if any.

        A stall takes the dump written while it lasted. One written later is kept for
        the stall it was written in: the watchdog, kept off the GIL until a second stall
        ended, looks back at the first one after both. One written earlier is of no
        stall (the watchdog itself was late to re-arm): it is dropped.
        """
        while True:
            try:
                chunk = os.read(self._read_fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            if not self._buffer:
                # Written at the last deadline passed; a later arm is still pending.
                now = perf_counter()
                self._buffer_due = max((d for d in self._dues if d <= now), default=now)
            self._buffer += chunk
        if not self._buffer or self._buffer_due > end:
            return None
        text, self._buffer = self._buffer.decode(errors="replace"), b""
        self._armed_at = -math.inf  # it fired: arm again at the next healthy wake
        return text if self._buffer_due >= start else None

    def close(self) -> None:
        """Cancel the dump, close the pipes; the reader sees its stdin close and ends."""
        dumptimer.cancel(self, release=True)
        if self._self_dump:
            faulthandler.unregister(SELF_DUMP_SIGNAL)
            self._self_dump = False
        for fd in (self._write_fd, self._read_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.reader is not None:
            try:
                self.reader.wait(READER_EXIT_S)
            except subprocess.TimeoutExpired:
                self.reader.kill()
                self.reader.wait()


def threads_if_cut(dump: str) -> int | None:
    """How many threads a dump holds when faulthandler stopped at its limit, else None.

    faulthandler writes at most 100 threads, newest first, then ``...``: beside 100 or
    more others, the loop's thread (usually the oldest) is not in it.
    """
    if _CUT.search(dump) is None:
        return None
    return len(THREAD_HEADER.findall(dump))


def cut_culprit(dumped: int, running: int | None = None) -> str:
    """The culprit of a stall whose dump was cut before the loop's thread."""
    of = f"{dumped} of {running}" if running else f"{dumped}"
    return (
        f"unknown (the native dump was cut: faulthandler writes {of} threads, newest "
        "first, and the loop's is older)"
    )


def stack_in_dump(dump: str, thread_id: int) -> list[str]:
    """The thread's stack from a faulthandler dump, innermost last, as ``file:line function``.

    A one-thread section (``SELF_HEADER``: the loop thread's own answer to the reader's
    signal) stands for the loop's when the dump of all threads was cut before it.
    """
    wanted = f"0x{thread_id:016x}"
    own: list[str] = []
    answered: list[str] = []
    section: list[str] | None = None
    for row in dump.splitlines():
        header = THREAD_HEADER.match(row)
        if header:
            mine = int(header.group(1), 16) == thread_id or header.group(1) == wanted
            section = own if mine else None
            continue
        if row.startswith(SELF_HEADER):
            answered.clear()
            section = answered
            continue
        frame = _FRAME.match(row) if section is not None else None
        if frame and section is not None:
            section.append(f"{frame.group(1)}:{frame.group(2)} {frame.group(3)}")
    found = own or answered
    found.reverse()  # faulthandler prints the most recent call first
    return found
