"""GilMeter: how much of a call's CPU time it spends without the GIL, measured from the loop.

The meter holds the GIL for a moment (``HOLD_S``) without using a CPU (libc's
``usleep``, called so that it keeps the GIL) and reads the CPU clock of every thread
that runs a measured call before and after. A thread that gained CPU time during
the hold ran without the GIL: native code that let go of it (hashlib, zlib, numpy).
A thread that runs Python code, or a C call that keeps the GIL (a large
``json.loads``), gains nothing: it waits for the GIL. Over many samples the gain per
second held is the rate at which a target computes *without* the GIL; its CPU time
per wall second minus that rate is the share of its time it holds the GIL, the time
the loop may have to wait for it.

Measured here (2 cores, 4 target kinds on threads at once): pure Python 0.43 CPU
share, 0.06 without the GIL; hashlib over 24 MB 0.51 and 0.57; ``sum(range(n))``
0.93 and 0.01. A busy-wait hold instead of a sleep takes a core from the threads it
watches and reads half the hashlib threads as holding the GIL; reading ``/proc`` state
from Python lets go of the GIL during the read and sees GIL waiters running.

Cost: ``HOLD_S`` of the loop's time per sample (0.3 ms every 50 ms: 0.6%), and a clock
read per measured thread (~1 us), only while measured calls run.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from loopwatch import targets
from loopwatch.causes import thread_cpu_s

# How long each sample holds the GIL.
HOLD_S = 0.0003
# libc through a PyDLL: its calls keep the GIL (a CDLL's let go of it).
_LIBC = ctypes.PyDLL(None)
_LIBC.usleep.argtypes = (ctypes.c_uint,)

# Native thread id -> the call it runs now and is measured (each pool thread writes its
# own entry; the loop thread reads them all: single dict operations, atomic under the GIL).
MEASURING: dict[int, _Running] = {}


@dataclass(frozen=True, eq=False)
class _Running:
    key: str
    ident: int
    cpu_at_start: float


class Measured:
    """A target wrapped so that each call reports its CPU and wall time: ``(result, cpu, wall)``.

    Picklable when the target is: the same wrapper runs in a thread and in a process
    pool child. With ``key`` set (threads), the GilMeter samples the call while it runs.
    ``__wrapped__`` lets stall reports name the target, not this wrapper.
    """

    __slots__ = ("__wrapped__", "key")

    def __init__(self, fn: targets.Target, key: str | None) -> None:
        self.__wrapped__ = fn
        self.key = key

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
        """Run the target; return its result, and the CPU and wall seconds it took."""
        cpu_at_start = time.thread_time()
        started = perf_counter()
        key = self.key
        if key is None:
            result = targets.drive(self.__wrapped__, args, kwargs)
        else:
            native = threading.get_native_id()
            MEASURING[native] = _Running(key, threading.get_ident(), cpu_at_start)
            try:
                result = targets.drive(self.__wrapped__, args, kwargs)
            finally:
                MEASURING.pop(native, None)
        return result, time.thread_time() - cpu_at_start, perf_counter() - started

    def __getstate__(self) -> tuple[targets.Target, str | None]:
        return self.__wrapped__, self.key

    def __setstate__(self, state: tuple[targets.Target, str | None]) -> None:
        self.__wrapped__, self.key = state


class GilMeter:
    """Adds up, per key, the CPU seconds measured threads gained while the meter held the GIL.

    ``sample()`` is called on the loop thread, periodically; ``take(key)`` returns and
    resets a key's figures.
    """

    def __init__(self, hold_s: float = HOLD_S) -> None:
        self.hold_s = hold_s
        self._free: defaultdict[str, float] = defaultdict(float)
        self._exposure: defaultdict[str, float] = defaultdict(float)
        self.samples = 0

    def sample(self) -> None:
        """Hold the GIL for ``hold_s`` and see which measured threads ran meanwhile."""
        running = [(r, thread_cpu_s(r.ident)) for r in list(MEASURING.values())]
        if not running:
            return
        self.samples += 1
        started = perf_counter()
        _LIBC.usleep(int(self.hold_s * 1e6))
        held = perf_counter() - started
        for call, before in running:
            after = thread_cpu_s(call.ident)
            if before is None or after is None:
                continue
            self._free[call.key] += max(0.0, after - before)
            self._exposure[call.key] += held

    def take(self, key: str) -> tuple[float, float]:
        """(CPU seconds gained without the GIL, seconds watched) of ``key`` since the last take."""
        return self._free.pop(key, 0.0), self._exposure.pop(key, 0.0)
