"""GilMeter: whether a call's thread needs the GIL to compute, seen from the loop.

The meter holds the GIL for a moment (``HOLD_S``, libc's ``usleep`` called so that it
keeps the GIL, using no CPU) and then looks at every thread that runs a measured call,
through reads that keep the GIL too. While it holds the GIL, a thread that runs Python
code, or a C call that keeps the GIL (a big ``json.loads``), cannot run: it sleeps on
the GIL's futex. A thread in native code that let go of the GIL (hashlib, zlib, numpy)
runs, or waits for a CPU: state R. A thread waiting on I/O sleeps elsewhere (its
``wchan`` is not the futex). Over many samples, the share of a call's busy samples
spent on the futex is the share of its work that needs the GIL.

Measured here (2 cores), share of samples in R: pure Python 0.00-0.12, hashlib over
8 MB 0.57-0.98, alone, together, and beside two CPU hogs. The CPU a thread gained
during the hold, tried first, fails beside CPU hogs: a GIL-free thread that waits for a
core gains nothing and reads as holding the GIL (hashlib read 76% GIL-bound). Reading
states through Python's own file I/O lets go of the GIL during the read: GIL waiters
took it and were seen running.

Cost: ``HOLD_S`` of the loop's time per sample (0.3 ms every 50 ms: 0.6%), and two
``/proc`` reads per measured thread (~4 us each), only while measured calls run.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections import defaultdict
from time import perf_counter
from typing import Any

from loopwatch import causes, crossing, targets

# How long each sample holds the GIL.
HOLD_S = 0.0003
# libc through a PyDLL: its calls keep the GIL (a CDLL's let go of it).
_LIBC = ctypes.PyDLL(None)
_LIBC.usleep.argtypes = (ctypes.c_uint,)
_LIBC.open.argtypes = (ctypes.c_char_p, ctypes.c_int)
_LIBC.open.restype = ctypes.c_int
_LIBC.pread.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long)
_LIBC.pread.restype = ctypes.c_ssize_t
_LIBC.close.argtypes = (ctypes.c_int,)

# Native thread id -> the key of the call it runs now and is measured (each pool thread
# writes its own entry; the loop thread reads them all: single dict operations, atomic
# under the GIL).
MEASURING: dict[int, str] = {}


class Measured:
    """A target wrapped so that each call reports its CPU and wall time: ``(result, cpu, wall)``.

    Picklable when the target is: the same wrapper runs in a thread and in a process
    pool child. With ``key`` set (threads), the GilMeter samples the call while it runs.
    With ``probe``, the call's payload and result are pickled afterwards on its thread
    (``crossing.probe``, bounded): whether a process could take it, and at what cost,
    found off the loop; the outcome is left in ``probed``. With ``seal`` (a process
    pool child), the result goes back ``crossing.Sealed``: unpicklable, it fails by name.
    ``__wrapped__`` lets stall reports name the target, not this wrapper.
    """

    __slots__ = ("__wrapped__", "key", "probe", "probed", "seal")

    def __init__(
        self, fn: targets.Target, key: str | None, *, probe: bool = False, seal: bool = False
    ) -> None:
        self.__wrapped__ = fn
        self.key = key
        self.probe = probe
        self.seal = seal
        self.probed: tuple[tuple[float, int] | str, tuple[float, int] | str] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
        """Run the target; return its result, the seconds it wanted a CPU, and wall seconds.

        Wanting a CPU is running on one or waiting for one: on a host that shares its
        CPUs, a computing call spends much of its time in the run queue, and counted
        by its CPU time alone it read as a call that waits (CI: 14% of wall time).
        """
        # Read where the thread's last call took more than its CPU time (the figure costs
        # ~3 us a read, as much again as the rest of this wrapper): a short call that
        # computed throughout pays nothing.
        queue = _run_queue() if getattr(_THIS_THREAD, "read_queue", True) else None
        queued_at_start = queue.wait_s() if queue is not None else None
        cpu_at_start = time.thread_time()
        started = perf_counter()
        key = self.key
        if key is None:
            result = targets.drive(self.__wrapped__, args, kwargs)
        else:
            native = threading.get_native_id()
            MEASURING[native] = key
            try:
                result = targets.drive(self.__wrapped__, args, kwargs)
            finally:
                MEASURING.pop(native, None)
        cpu, wall = time.thread_time() - cpu_at_start, perf_counter() - started
        _THIS_THREAD.read_queue = wall >= QUEUE_READ_MIN_S and wall - cpu > 0.2 * wall
        if queue is not None:
            cpu += causes.waited_s(queued_at_start, queue.wait_s())
        if self.probe:
            sent = crossing.probe((self.__wrapped__, args, kwargs))
            self.probed = (sent, crossing.probe(result) if isinstance(sent, tuple) else sent)
        return (crossing.Sealed(result) if self.seal else result), cpu, wall

    def __getstate__(self) -> tuple[targets.Target, str | None, bool]:
        return self.__wrapped__, self.key, self.seal

    def __setstate__(self, state: tuple[targets.Target, str | None, bool]) -> None:
        self.__wrapped__, self.key, self.seal = state
        self.probe, self.probed = False, None


_THIS_THREAD = threading.local()
# Calls shorter than this say nothing of a wait for a CPU worth its reading.
QUEUE_READ_MIN_S = 0.0005


def _run_queue() -> causes.RunQueue:
    """The calling thread's run-queue figure, its file kept open for the thread's life."""
    try:
        queue: causes.RunQueue = _THIS_THREAD.run_queue
    except AttributeError:
        queue = _THIS_THREAD.run_queue = causes.RunQueue(threading.get_native_id())
    return queue


class _ThreadFiles:
    """A thread's ``stat`` and ``wchan`` files, kept open and read in place, GIL held."""

    def __init__(self, native_id: int) -> None:
        base = f"/proc/self/task/{native_id}/"
        self.fds = [
            _LIBC.open((base + name).encode(), os.O_RDONLY | os.O_CLOEXEC)
            for name in ("stat", "wchan")
        ]

    def read(self, which: int, buffer: ctypes.Array[ctypes.c_char]) -> bytes:
        fd = self.fds[which]
        if fd < 0:
            return b""
        n = _LIBC.pread(fd, buffer, len(buffer), 0)
        return buffer.raw[:n] if n > 0 else b""

    def close(self) -> None:
        for fd in self.fds:
            if fd >= 0:
                _LIBC.close(fd)


class GilMeter:
    """Counts, per key, the samples in which measured threads ran without the GIL or waited for it.

    ``sample()`` is called on the loop thread, periodically; ``take(key)`` returns and
    resets a key's counts.
    """

    def __init__(self, hold_s: float = HOLD_S) -> None:
        self.hold_s = hold_s
        self._free: defaultdict[str, int] = defaultdict(int)
        self._gil: defaultdict[str, int] = defaultdict(int)
        self._files: dict[int, _ThreadFiles] = {}
        self._buffer = ctypes.create_string_buffer(1024)

    def sample(self) -> None:
        """Hold the GIL for ``hold_s``, then see where each measured thread is."""
        running = list(MEASURING.items())
        if not running:
            return
        _LIBC.usleep(int(self.hold_s * 1e6))
        for native, key in running:
            state = self._state(native)
            if state == "free":
                self._free[key] += 1
            elif state == "gil":
                self._gil[key] += 1
        for native in [n for n in self._files if n not in MEASURING]:
            self._files.pop(native).close()

    def _state(self, native: int) -> str | None:
        """Where the thread is: "free" (R: running or runnable), "gil" (futex), None (I/O)."""
        files = self._files.get(native)
        if files is None:
            files = self._files[native] = _ThreadFiles(native)
        letter = causes.thread_state(files.read(0, self._buffer))
        if letter is None:
            return None
        if letter == b"R":
            return "free"
        wchan = files.read(1, self._buffer)
        # No wchan to read (a kernel that hides it): a sleeping computing thread is on the GIL.
        return "gil" if not wchan or wchan == b"0" or b"futex" in wchan else None

    def take(self, key: str) -> tuple[int, int]:
        """(samples without the GIL, samples waiting for it) of ``key`` since the last take."""
        return self._free.pop(key, 0), self._gil.pop(key, 0)

    def close(self) -> None:
        """Close the files kept open."""
        for files in self._files.values():
            files.close()
        self._files.clear()
