"""A stall being followed (what each sample saw, charged to its interval) and its event."""

from __future__ import annotations

import contextvars
import time
from dataclasses import asdict, dataclass, field, replace
from time import perf_counter
from typing import Any

from loopwatch import causes

Key = tuple[str, str | None, causes.Cause]


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
        """Re-read ``unknown`` stretches as ``starved`` when the run-queue wait covers them.

        The kernel adds a thread's run-queue wait to its figures only once it runs again:
        while the loop waits for a CPU, every look finds no wait, and no thread running,
        so those stretches were ``unknown``; the wait shows up in the last one. At the end
        of the stall the total tells. A wait that covers the whole stall (measured beside
        two CPU hogs: 0.354 s of it in a 0.174 s stall) makes every stretch ``starved``:
        whatever the loop's code did, the host did not run it.
        """
        if self.queue_wait_s >= duration:
            recast: tuple[causes.Cause, ...] = ("unknown", "cpu", "wait", "gil")
        elif self.queue_wait_s >= causes.MOST * duration:
            recast = ("unknown",)
        else:
            return
        for key in [k for k in self.seconds if k[2] in recast]:
            starved: Key = (key[0], key[1], "starved")
            self.seconds[starved] = self.seconds.get(starved, 0.0) + self.seconds.pop(key)
            lines = self.lines.setdefault(starved, {})
            for line, seconds in self.lines.pop(key, {}).items():
                lines[line] = lines.get(line, 0.0) + seconds
            first = self.first.pop(key)
            self.first.setdefault(
                starved,
                replace(first, cause="starved"),
            )

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
