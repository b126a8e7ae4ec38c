"""Which strategy fits a target: one rule, fed by ``auto`` in a running service and by the bench.

The rule reads what a target's calls did, not what kind of code it is. Three figures
decide, measured per call or while calls run (``loopwatch.gilmeter``):

* **GIL share of wall time**: how much of its calls' time the target held the GIL (its
  CPU share, times the share of its work the GIL meter saw waiting for the GIL). A
  thread holding it keeps the loop from running (pure-Python CPU work, or a C call
  such as a large ``json.loads`` that never lets go). That belongs in a process.
* **CPU share of wall time**: a call that mostly waits (sockets, files, a database)
  holds nothing, and a thread is the cheapest place for it.
* **GIL seconds the watchdog charged to it**: stalls in which the loop waited for the
  GIL while this target ran; the loop's own word that the target must move.

CPU time alone would send a GIL-releasing call (``hashlib`` over a large buffer, zlib,
numpy) to a process for nothing: it runs in parallel with the loop on a thread, and a
process only adds pickling. The rule keeps those on threads.

A band between the thresholds to move and to move back (hysteresis) keeps a target
whose figures hover near one threshold from flapping; ``auto`` adds a minimum dwell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Fit = Literal["thread", "process"]

# Thread -> process: the calls held the GIL for at least this share of their wall time
# (a thread pool worker competing with the loop for it)...
MOVE_GIL_SHARE = 0.15
# ... and at least this share of the CPU they used (native code that releases the GIL,
# such as hashlib, uses the CPU without holding it).
MOVE_GIL_OF_CPU = 0.5
# The loop waited in GIL stalls charged to the target for this share of the window...
MOVE_STALL_SHARE = 0.02
# ...and the target used the CPU for at least this share of its calls' wall time.
STALL_MIN_CPU_SHARE = 0.05
# Process -> thread: the calls used less CPU than this share of their wall time: they
# wait on I/O now, where a thread costs nothing and a process adds pickling.
BACK_CPU_SHARE = 0.1
# Pickling the arguments costing more than this share of a call's CPU time makes a
# process lose more than it wins.
MAX_PICKLE_SHARE = 0.5


@dataclass(frozen=True)
class Evidence:
    """What one target's calls did over a window, on the strategy that ran them.

    ``free_samples`` and ``gil_samples`` come from the GIL meter, on a thread only (None
    in a process, whose GIL is its own): how often the calls' threads were seen running
    without the GIL, and waiting for it, while the meter held it.
    ``stall_gil_s`` is what the watchdog charged to the target with cause ``gil``.
    """

    strategy: Fit
    window_s: float
    calls: int
    wall_s: float
    cpu_s: float
    free_samples: int | None = None
    gil_samples: int | None = None
    stall_gil_s: float = 0.0
    pickle_s: float | None = None  # per call; None until measured, inf when it cannot
    pickle_bytes: int | None = None

    @property
    def cpu_share(self) -> float:
        """Seconds the calls wanted a CPU (ran on one or waited for one) per wall second."""
        return min(1.0, self.cpu_s / self.wall_s) if self.wall_s > 0 else 0.0

    @property
    def gil_of_cpu(self) -> float | None:
        """The share of the calls' work that needs the GIL (None unmeasured)."""
        if self.free_samples is None or self.gil_samples is None:
            return None
        seen = self.free_samples + self.gil_samples
        return self.gil_samples / seen if seen else 0.0

    @property
    def gil_share(self) -> float | None:
        """Seconds the calls held the GIL per wall second of the calls (None unmeasured)."""
        of_cpu = self.gil_of_cpu
        return None if of_cpu is None else self.cpu_share * of_cpu


@dataclass(frozen=True)
class Choice:
    """The strategy that fits, and why, in figures a person can check."""

    strategy: Fit
    reason: str
    # Some figure decided (False: no evidence either way, keep what runs).
    decided: bool = True


def choose(evidence: Evidence) -> Choice:
    """The strategy that keeps the loop free at the best throughput, given ``evidence``."""
    if evidence.calls == 0 or evidence.wall_s <= 0:
        return Choice(evidence.strategy, "no call finished in the window", decided=False)
    if evidence.strategy == "process":
        return _from_process(evidence)
    return _from_thread(evidence)


def _from_process(evidence: Evidence) -> Choice:
    cpu = evidence.cpu_share
    if cpu < BACK_CPU_SHARE:
        return Choice(
            "thread",
            f"calls used the CPU for {cpu:.0%} of their wall time: they wait, "
            "and a thread waits as well as a process without pickling",
        )
    return Choice("process", f"calls use the CPU for {cpu:.0%} of their wall time")


def _from_thread(evidence: Evidence) -> Choice:
    cpu, held, of_cpu = evidence.cpu_share, evidence.gil_share, evidence.gil_of_cpu
    stall_share = evidence.stall_gil_s / evidence.window_s if evidence.window_s > 0 else 0.0
    # The watchdog names as the GIL's holder the thread that used most CPU in a stall,
    # and a thread in native code that let go of the GIL uses CPU too: where the meter
    # saw this target compute without the GIL, its stall seconds are not its own.
    # And a target that hardly uses a CPU cannot have held the GIL for long: the stall
    # was another thread's (seen beside CPU hogs: a sleeping I/O worker was named).
    if (
        stall_share >= MOVE_STALL_SHARE
        and cpu >= STALL_MIN_CPU_SHARE
        and (of_cpu is None or of_cpu >= MOVE_GIL_OF_CPU)
    ):
        return _unless_pickling(
            evidence,
            f"the loop waited {evidence.stall_gil_s:.2f} s for the GIL in stalls while "
            f"its calls ran, in the last {evidence.window_s:.0f} s"
            + (f"; calls held the GIL for {held:.0%} of their wall time" if held else ""),
        )
    if held is None or of_cpu is None:
        return Choice("thread", "the GIL was not sampled", decided=False)
    if held >= MOVE_GIL_SHARE and of_cpu >= MOVE_GIL_OF_CPU:
        return _unless_pickling(
            evidence,
            f"calls held the GIL for {held:.0%} of their wall time "
            f"({of_cpu:.0%} of their CPU time), keeping the loop waiting for it",
        )
    if cpu >= MOVE_GIL_SHARE:
        return Choice(
            "thread",
            f"calls used the CPU for {cpu:.0%} of their wall time but held the GIL for "
            f"{held:.0%} (native code that lets go of it): a thread runs them beside "
            "the loop, and a process would only add pickling",
        )
    return Choice(
        "thread",
        f"calls used the CPU for {cpu:.0%} of their wall time and held the GIL for "
        f"{held:.0%}: they wait, and a thread is the cheapest place to wait",
    )


def _unless_pickling(evidence: Evidence, why: str) -> Choice:
    """Process, for ``why``, unless pickling the calls rules it out."""
    if evidence.pickle_s is None:
        return Choice("process", why)
    if evidence.pickle_s == float("inf"):
        return Choice(
            "thread", f"{why}; but the target or its arguments cannot be pickled for a process"
        )
    cpu_per_call = evidence.cpu_s / evidence.calls
    if evidence.pickle_s > MAX_PICKLE_SHARE * cpu_per_call:
        size = f" ({evidence.pickle_bytes / 1e6:.1f} MB)" if evidence.pickle_bytes else ""
        return Choice(
            "thread",
            f"{why}; but pickling a call's arguments{size} takes "
            f"{evidence.pickle_s * 1000:.1f} ms, more than half of its "
            f"{cpu_per_call * 1000:.1f} ms of CPU work",
        )
    return Choice("process", why)
