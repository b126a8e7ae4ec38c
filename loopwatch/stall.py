"""A stall being followed: what each sample saw, charged to its interval, and the event."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loopwatch import causes

Key = tuple[str, str | None, str]


@dataclass
class Sample:
    """What one sample saw: charged to the interval that ends with it."""

    culprit: str
    worker: str | None
    cause: causes.Cause
    stack: list[str]
    task: str | None = None
    request: str | None = None


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

    def _hottest(self, key: Key) -> str:
        lines = self.lines[key]
        return max(lines, key=lines.__getitem__)

    def fields(self, duration: float, *, ongoing: bool) -> dict[str, Any]:
        """The ``stall`` event."""
        ranked = sorted(self.seconds.items(), key=lambda kv: kv[1], reverse=True)
        culprits = [
            {
                "culprit": self._hottest(key),
                "worker": key[1],
                "cause": key[2],
                "seconds": round(s, 4),
            }
            for key, s in ranked
        ]
        top = self.first[ranked[0][0]] if ranked else Sample("unknown", None, "unknown", [])
        out: dict[str, Any] = {
            "duration": round(duration, 4),
            "cause": top.cause,
            "culprit": culprits[0]["culprit"] if culprits else "unknown",
            "worker": top.worker,
            "stack": top.stack,
            "culprits": culprits,
            "ongoing": ongoing,
            "loop_cpu": round(self.loop_cpu_s, 4),
        }
        if top.task is not None:
            out["task"] = top.task
        if top.request is not None:
            out["request"] = top.request
        if self.gc_s > 0:
            out["gc_seconds"] = round(self.gc_s, 4)
            out["gc_generation"] = self.gc_generation
        if self.queue_wait_s > 0:
            out["run_queue_wait"] = round(self.queue_wait_s, 4)
        if self.holders:
            out["gil_holders"] = sorted(self.holders)
        if self.dump is not None:
            out["dump"] = self.dump
        return out


def _function_of(line: str) -> str:
    """``file:line function`` -> ``file function``."""
    where, _, function = line.rpartition(" ")
    return f"{where.rpartition(':')[0]} {function}" if where else line
