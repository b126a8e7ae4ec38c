"""A stall being followed (what each sample saw, charged to its interval) and its event."""

from __future__ import annotations

import contextvars
import time
from dataclasses import asdict, dataclass, field, replace
from time import perf_counter
from typing import Any

from loopwatch import causes

Key = tuple[str, str | None, causes.Cause]
# Less than this of a stall's off-CPU time to recast is the figures' noise: its first and
# last looks' clocks reach outside it (3 ms measured beside two hogs, a 0.3 s sleep).
MIN_RECAST_S = 0.005


@dataclass
class Sample:
    """What one sample saw: charged to the interval that ends with it."""

    culprit: str
    worker: str | None
    cause: causes.Cause
    stack: list[str]
    task: str | None = None
    request: str | None = None
    # The blocked task's context (``taskcontext``): its current span parents the stall's.
    context: contextvars.Context | None = field(default=None, compare=False, repr=False)


@dataclass
class Stall:
    """A stall being followed: its segments and the evidence gathered so far."""

    beat: float
    start: float
    # Keyed by (file and function, worker, cause): a loop's samples land on several
    # lines of one function, and the user looks for the function, then its hottest line.
    seconds: dict[Key, float] = field(default_factory=dict)
    lines: dict[Key, dict[str, float]] = field(default_factory=dict)
    first: dict[Key, Sample] = field(default_factory=dict)
    loop_cpu_s: float = 0.0
    gc_s: float = 0.0
    gc_generation: int = -1
    queue_wait_s: float = 0.0
    holders: set[str] = field(default_factory=set)
    dump: str | None = None
    dump_stack: tuple[str, ...] = ()  # the loop thread's, in ``dump``
    dump_cut: str | None = None  # the culprit to give when ``dump`` was cut before it
    counted: bool = False

    def charge(self, sample: Sample, seconds: float, verdict: causes.Verdict) -> None:
        """Add ``seconds`` of the stall to what ``sample`` saw."""
        key = (_function_of(sample.culprit), sample.worker, sample.cause)
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds
        lines = self.lines.setdefault(key, {})
        lines[sample.culprit] = lines.get(sample.culprit, 0.0) + seconds
        self.first.setdefault(key, sample)
        self.loop_cpu_s += verdict.loop_cpu_s
        self.gc_s += verdict.gc_s
        self.gc_generation = max(self.gc_generation, verdict.gc_generation)
        self.queue_wait_s += verdict.queue_wait_s

    def fit(self, duration: float) -> None:
        """Scale the segments to add up to ``duration`` (the probe's measure of the stall)."""
        total = sum(self.seconds.values())
        if total > 0:
            scale = duration / total
            self.seconds = {k: v * scale for k, v in self.seconds.items()}

    def account_late_queue_wait(self, duration: float) -> None:
        """Re-read stretches as ``starved`` where the run-queue wait shows they were.

        The kernel adds a thread's run-queue wait to its figures only once it runs again:
        a look taken while the loop waits for a CPU finds no wait, and no thread running,
        so it reads ``unknown``, or ``wait`` off the loop's stack; the wait shows up in a
        later look, or after the last. At the end of the stall the totals tell:

        - a wait that covers the whole stall (measured beside two CPU hogs: 0.354 s of it
          in a 0.174 s stall) makes every stretch ``starved``: whatever the loop's code
          did, the host did not run it;
        - one that covers most of it, the ``unknown`` stretches;
        - off-CPU stretches (``unknown``, then ``wait``) longer than the time the loop was
          off a CPU and out of the run queue are ``starved`` for the difference, up to the
          wait: a spin preempted by the host blocked nothing.
        """
        if self.queue_wait_s >= duration:
            self._recast(("unknown", "cpu", "wait", "gil"), duration)
            return
        if self.queue_wait_s >= causes.MOST * duration:
            self._recast(("unknown",), duration)
        off_cpu = sum(s for k, s in self.seconds.items() if k[2] in ("unknown", "wait"))
        blocked = max(0.0, duration - self.loop_cpu_s - self.queue_wait_s)
        excess = min(self.queue_wait_s, off_cpu - blocked)
        if excess >= MIN_RECAST_S:
            self._recast(("wait",), excess - self._recast(("unknown",), excess))

    def _recast(self, recast: tuple[causes.Cause, ...], up_to: float) -> float:
        """Move up to ``up_to`` seconds of the ``recast`` causes' stretches to ``starved``."""
        done = 0.0
        for key in [k for k in self.seconds if k[2] in recast]:
            if done >= up_to:
                break
            moved = min(self.seconds[key], up_to - done)
            share = moved / self.seconds[key] if self.seconds[key] > 0 else 1.0
            done += moved
            starved: Key = (key[0], key[1], "starved")
            self.seconds[starved] = self.seconds.get(starved, 0.0) + moved
            self.seconds[key] -= moved
            lines = self.lines.setdefault(starved, {})
            for line, seconds in self.lines[key].items():
                lines[line] = lines.get(line, 0.0) + seconds * share
                self.lines[key][line] = seconds * (1 - share)
            self.first.setdefault(starved, replace(self.first[key], cause="starved"))
            if share >= 1.0:
                del self.seconds[key], self.lines[key], self.first[key]
        return done

    def _hottest(self, key: Key) -> str:
        lines = self.lines[key]
        return max(lines, key=lines.__getitem__)

    def event(self, duration: float, *, ongoing: bool) -> StallEvent:
        """The stall as reported now."""
        ranked = sorted(self.seconds.items(), key=lambda kv: kv[1], reverse=True)
        culprits = tuple(
            Culprit(self._hottest(key), key[1], key[2], round(s, 4)) for key, s in ranked
        )
        top = self.first[ranked[0][0]] if ranked else Sample("unknown", None, "unknown", [])
        return StallEvent(
            duration=round(duration, 4),
            cause=top.cause,
            culprit=culprits[0].culprit if culprits else "unknown",
            worker=top.worker,
            stack=tuple(top.stack),
            culprits=culprits,
            ongoing=ongoing,
            loop_cpu=round(self.loop_cpu_s, 4),
            task=top.task,
            request=top.request,
            gc_seconds=round(self.gc_s, 4) if self.gc_s > 0 else None,
            gc_generation=self.gc_generation if self.gc_s > 0 else None,
            run_queue_wait=round(self.queue_wait_s, 4) if self.queue_wait_s > 0 else None,
            gil_holders=tuple(sorted(self.holders)),
            dump=self.dump,
            started=time.time() - (perf_counter() - self.start),
            context=top.context,
        )


@dataclass(frozen=True)
class Culprit:
    """One piece of a stall: the user's line, its worker, the cause, and its share."""

    culprit: str
    worker: str | None
    cause: causes.Cause
    seconds: float


@dataclass(frozen=True)
class StallEvent:
    """A stall, as the ``stall`` log line tells it; see shared contract "Stall diagnosis".

    Reported while the loop is still stuck (``ongoing`` true, about half a second past
    the threshold) and again when it ends, with the final figures. ``culprit`` is the
    innermost line of the user's code (``file:line function``); ``culprits`` split the
    stall by culprit, largest first, and their ``seconds`` add up to ``duration``.
    """

    duration: float
    cause: causes.Cause
    culprit: str
    worker: str | None
    stack: tuple[str, ...]
    culprits: tuple[Culprit, ...]
    ongoing: bool
    loop_cpu: float
    task: str | None = None
    request: str | None = None
    gc_seconds: float | None = None
    gc_generation: int | None = None
    run_queue_wait: float | None = None
    gil_holders: tuple[str, ...] = ()
    dump: str | None = None
    # time.time() when it was reported, and when the stall began.
    at: float = field(default_factory=time.time)
    started: float = 0.0
    # The blocked task's context, where it is known: not part of the log line.
    context: contextvars.Context | None = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The ``stall`` log event's fields (optional ones only when known)."""
        out: dict[str, Any] = {
            "duration": self.duration,
            "cause": self.cause,
            "culprit": self.culprit,
            "worker": self.worker,
            "stack": list(self.stack),
            "culprits": [asdict(c) for c in self.culprits],
            "ongoing": self.ongoing,
            "loop_cpu": self.loop_cpu,
        }
        optional = {
            "task": self.task,
            "request": self.request,
            "gc_seconds": self.gc_seconds,
            "gc_generation": self.gc_generation,
            "run_queue_wait": self.run_queue_wait,
            "gil_holders": list(self.gil_holders) or None,
            "dump": self.dump,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out


def _function_of(line: str) -> str:
    """``file:line function`` -> ``file function``."""
    where, _, function = line.rpartition(" ")
    return f"{where.rpartition(':')[0]} {function}" if where else line
