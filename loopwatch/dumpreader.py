"""The dump reader: a small process that reads faulthandler's dumps while the watched one cannot.

When native code holds the GIL, no Python thread of the process runs, the watchdog's
included: faulthandler's C thread still writes every thread's stack to its pipe, but
nothing inside the process reads it until the GIL comes back, which may be never. This
process reads it from outside, at once, and writes a ``stall`` line (``ongoing``,
``source: "dump"``) to the log stream it shares with the watched process, naming the
user's line of the thread that held the GIL. Measured: the line is out ~0.1 s after
faulthandler's deadline, with the watched process stuck in one C call for good.

It forwards every byte to its stdout, a pipe the watchdog reads when it runs again, so
the watchdog's own final ``stall`` line still has the dump. It ends when its stdin
closes: when the watcher closes the dump, or the watched process dies (even by SIGKILL).
An idle reader sleeps in ``select``: no CPU, ~10 MB of memory.

Usage (by ``loopwatch.dump.NativeDump``):
``python -m loopwatch.dumpreader LOOP_THREAD_ID DEADLINE_S USER_PATHS_JSON LOOP_NATIVE_ID``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import select
import signal
import sys
import time
from datetime import UTC, datetime
from typing import Any

from loopwatch import frames
from loopwatch.causes import Cause, schedstat
from loopwatch.dump import (
    SELF_HEADER,
    THREAD_HEADER,
    cut_culprit,
    stack_in_dump,
    threads_if_cut,
)

# A dump is whole once its writer has been quiet this long.
QUIET_S = 0.05
# How long the reader watches the loop thread's clocks, and the share of it the thread
# must have run or waited for a CPU to be busy rather than blocked.
BUSY_LOOK_S = 0.1
BUSY_SHARE = 0.5
# The share of the look a wait for a CPU must cover for the host, not the code, to be
# the cause: the kernel's and our clocks are read a few microseconds apart.
COVERS = 0.9
_CURRENT = re.compile(r"^Current thread (0x[0-9a-f]+)", re.MULTILINE)


def cause_from_clocks(ran_s: float, queued_s: float, look_s: float) -> Cause:
    """What a loop thread stuck in one call did over a look of ``look_s`` seconds.

    Computed (``cpu``), even if the host ran it a third of the time: it waited for a CPU
    the rest, not for something outside. Blocked (``wait``) when it neither ran nor
    waited for a CPU most of the look; ``starved`` when it waited for one all along.
    """
    if queued_s >= COVERS * look_s:
        return "starved"
    if ran_s + queued_s >= BUSY_SHARE * look_s:
        return "cpu"
    return "wait"


def stall_line(
    dump: str, loop_thread: int, deadline_s: float, loop_cause: Cause | None = None
) -> dict[str, Any]:
    """The ``stall`` line of one dump: who held the GIL, and the user's line it ran.

    ``loop_cause``: what the loop thread did just now, from its clocks (None: unknown).
    """
    current = _CURRENT.search(dump)
    holder = int(current.group(1), 16) if current else None
    cause: Cause
    if holder is None:
        # faulthandler's timer names no current thread: the loop's own stack is what is
        # stuck; its clocks tell a call computing (cpu) from one waiting (wait).
        stack = stack_in_dump(dump, loop_thread)
        cause = "unknown" if loop_cause is None else loop_cause
    elif holder == loop_thread:
        # The loop thread itself is in a call that keeps the GIL: its own code ran.
        cause, stack = "cpu", stack_in_dump(dump, holder)
    else:
        cause, stack = "gil", stack_in_dump(dump, holder)
    threads = len(THREAD_HEADER.findall(dump))
    return {
        "event": "stall",
        "ongoing": True,
        "source": "dump",
        "duration": deadline_s,
        "cause": cause,
        "culprit": _culprit(dump, stack),
        "holder": f"0x{holder:x}" if holder is not None else None,
        "threads": threads,
        "stack": stack,
        "note": (
            f"no Python thread ran for over {deadline_s:g} s: the stacks were dumped from C "
            "and read from outside the process"
        ),
        "level": "warning",
        "logger": "loopwatch",
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }


def _culprit(dump: str, stack: list[str]) -> str:
    if stack:
        return frames.culprit_on_loop(stack)
    dumped = threads_if_cut(dump)
    return "unknown" if dumped is None else cut_culprit(dumped)


def _write(line: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        os.write(2, (json.dumps(line) + "\n").encode())


def _signal_thread(pid: int, native_id: int, signum: int) -> bool:
    """Send ``signum`` to one thread of another process (``tgkill``); whether it went."""
    tgkill = getattr(ctypes.CDLL(None, use_errno=True), "tgkill", None)
    return tgkill is not None and tgkill(pid, native_id, signum) == 0


def relay(source: int, forward: int, report: Any) -> None:
    """Copy ``source`` to ``forward`` until EOF; hand each whole dump to ``report``."""
    os.set_blocking(forward, False)
    pending = b""
    while True:
        ready, _, _ = select.select([source], [], [], QUIET_S if pending else None)
        if not ready:
            report(pending.decode(errors="replace"))
            pending = b""
            continue
        chunk = os.read(source, 65536)
        if not chunk:
            if pending:
                report(pending.decode(errors="replace"))
            return
        # The watchdog reads it when it runs again; if it never does, the pipe fills
        # and the rest is dropped rather than block this reader.
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(forward, chunk)
        pending += chunk


def main() -> None:
    """Read dumps on stdin until it closes; log each as a ``stall`` line on stderr."""
    # Ctrl-C reaches the whole process group: the reader ends with its stdin, not before.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop_thread, deadline_s = int(sys.argv[1]), float(sys.argv[2])
    paths = json.loads(sys.argv[3]) if len(sys.argv) > 3 else []
    loop_native = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] != "0" else None
    self_dump = int(sys.argv[5]) if len(sys.argv) > 5 else None
    watched = os.getppid()
    if paths:
        frames.user_code(*paths)
    asked: list[dict[str, Any]] = []  # the line of a cut dump, waiting for the loop's answer

    def report(dump: str) -> None:
        if asked and SELF_HEADER in dump:
            # The loop thread's own stack, written by its signal handler: the cut dump's
            # line, named at last.
            line = asked.pop()
            stack = stack_in_dump(dump, loop_thread)
            line.update(stack=stack, culprit=_culprit(dump, stack), answered=True)
            _write(line)
            return
        if not THREAD_HEADER.search(dump):
            return
        cause = None
        if loop_native is not None:
            before, started = schedstat(loop_native, watched), time.perf_counter()
            time.sleep(BUSY_LOOK_S)
            after, ended = schedstat(loop_native, watched), time.perf_counter()
            if before is not None and after is not None:
                ran, queued = after[0] - before[0], after[1] - before[1]
                cause = cause_from_clocks(ran, queued, ended - started)
        line = stall_line(dump, loop_thread, deadline_s, cause)
        cut = not line["stack"] and threads_if_cut(dump) is not None
        if cut and self_dump and loop_native and _signal_thread(watched, loop_native, self_dump):
            asked[:] = [line]  # written when the answer comes, with the loop's own stack
            return
        _write(line)

    with contextlib.suppress(KeyboardInterrupt):
        relay(0, 1, report)


if __name__ == "__main__":
    main()
