"""Who held a stuck loop over one interval, and why: a pure function of what was gathered.

The watchdog thread gathers a ``Look`` per interval of a stall (the two readings, the
collections that overlapped it, the loop's stack, the dump's, the GIL holder's, the
worker on the loop). ``attribute`` decides from it alone: a case the watchdog meets is a
row of a table (``tests/test_attribution.py``), not a branch in a thread's loop.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, replace
from types import CodeType

from loopwatch import causes, frames
from loopwatch.stall import Sample

IDLE_IN_SELECTOR = "unknown (the loop was idle in its selector)"


@dataclass(frozen=True)
class Holder:
    """The thread the readings say held the GIL, as the watchdog found it."""

    name: str
    stack: tuple[str, ...]
    worker: str | None = None  # the pool worker whose call it runs
    code: CodeType | None = None  # that call's target


@dataclass(frozen=True)
class Call:
    """The last blocking call the loop made through a worker, and when it ran."""

    worker: str | None
    definition: str | None  # ``file:line function`` of its target; None for a builtin
    start: float
    end: float


@dataclass(frozen=True)
class Look:
    """One interval of a stall, from ``begin`` to ``reading.at``, as it was gathered."""

    prev: causes.Reading
    reading: causes.Reading
    begin: float
    # The watchdog woke much later than it asked: some thread held the GIL.
    late: bool = False
    # The loop's stack was taken: it had not come back by the end of the interval.
    sampled: bool = True
    loop_stack: tuple[str, ...] = ()
    # The loop thread's stack in the stall's native dump (empty: no dump).
    dump_stack: tuple[str, ...] = ()
    # The dump was cut before the loop's thread: what to say instead of "unknown".
    dump_cut: str | None = None
    gc_s: float = 0.0
    gc_generation: int = -1
    # The stack that set off the longest collection over the interval, and its worker.
    gc_trigger: tuple[str, ...] = ()
    gc_worker: str | None = None
    holder: Holder | None = None
    worker: str | None = None  # the worker whose call runs on the loop now
    last_call: Call | None = None
    task: str | None = None
    request: str | None = None
    context: contextvars.Context | None = None  # the task's
    # What the stall's previous interval was charged to.
    previous: Sample | None = None


@dataclass(frozen=True)
class Attribution:
    """The cause of an interval, what it is charged to, and the GIL holders it names."""

    verdict: causes.Verdict
    sample: Sample
    holders: tuple[str, ...] = ()


def attribute(look: Look) -> Attribution:
    """Why the loop was stuck over ``look``'s interval, and on what."""
    verdict = causes.classify(
        look.prev, look.reading, look.gc_s, look.gc_generation, watchdog_late=look.late
    )
    holders: tuple[str, ...] = ()
    if verdict.cause == "gil" and look.holder is not None:
        holders = (look.holder.name,)
        if not _loop_ran_user_code(look):
            return Attribution(verdict, _holder_sample(look.holder), holders)
        # The loop thread was itself in a call of the user's: a C parser whose
        # collections (gc.callbacks) let the holder take the GIL now and then. The call
        # is the culprit, the holder stays named among the GIL's holders.
    # A loop idle in its selector is in no one's code: the probe's timer was due and the
    # loop not run again yet (a busy host). Its wait for a CPU is counted by the kernel
    # when it runs: ``Stall`` re-reads the unknown stretch at the end.
    idle = idle_in_selector(look.loop_stack)
    if idle and verdict.cause == "wait":
        verdict = causes.Verdict(
            "unknown", loop_cpu_s=verdict.loop_cpu_s, queue_wait_s=verdict.queue_wait_s
        )
    stack, worker = _stack_and_worker(look, verdict, idle=idle)
    if stack:
        culprit = frames.culprit_on_loop(stack)
    elif look.dump_cut is not None:
        # A native dump was written while the loop was stuck: the loop was not idle
        # then, whatever a late look at it shows now (a loaded run found it in select).
        culprit = look.dump_cut
    elif idle and verdict.cause != "starved":
        culprit = IDLE_IN_SELECTOR
    else:
        culprit = unseen_culprit(verdict.cause, late=look.late)
    last = look.last_call
    overlapped = last is not None and last.start <= look.reading.at and last.end >= look.begin
    if overlapped and (worker is None or not frames.is_user_line(culprit)):
        # Blind, or the loop moved on: the blocking call that overlapped this interval.
        assert last is not None
        worker = last.worker or None
        if not frames.is_user_line(culprit):
            culprit = last.definition or culprit
    previous = look.previous
    if (idle or not look.sampled) and previous is not None and culprit.startswith("unknown"):
        # The last stretch, seen only once the loop was back (or idle): its cause is
        # known (a collection, a GIL hold), its code is most likely the last one sampled.
        return Attribution(verdict, _again(previous, verdict.cause), holders)
    sample = Sample(
        culprit,
        worker,
        verdict.cause,
        list(stack or look.loop_stack),
        look.task,
        look.request,
        look.context,
    )
    return Attribution(verdict, sample, holders)


def _stack_and_worker(
    look: Look, verdict: causes.Verdict, *, idle: bool
) -> tuple[tuple[str, ...], str | None]:
    """The stack that shows what held the loop over the interval, and the worker of it."""
    stack = () if idle else look.loop_stack
    worker = look.worker if look.sampled and not idle else None
    if verdict.cause == "gc" and (look.late or not stack) and look.gc_trigger:
        stack, worker = look.gc_trigger, look.gc_worker or worker
    if (look.late or not stack) and look.dump_stack and not idle_in_selector(look.dump_stack):
        # The watchdog was blind (native code held the GIL): faulthandler was not.
        stack = look.dump_stack
    return stack, worker


def idle_in_selector(stack: tuple[str, ...]) -> bool:
    """Whether a loop thread's stack ends waiting in its selector: idle, in no one's code."""
    if not stack:
        return False
    filename, function = frames.file_and_function(stack[-1])
    return function == "select" and filename.endswith("/selectors.py")


def unseen_culprit(cause: str, *, late: bool) -> str:
    """The culprit of an interval whose stack nobody could take, in agreement with its cause.

    Only a late watchdog knows that some thread held the GIL; a ``starved`` loop waited
    for a CPU (the demo's ``cause=starved culprit='unknown (the GIL was held)'`` said both).
    """
    if cause == "starved":
        return "unknown (the loop thread waited for a CPU)"
    if cause in ("gil", "unknown") and late:
        return "unknown (the GIL was held)"
    return "unknown"


def where(code: CodeType) -> str:
    """``file:line function`` of where ``code`` is defined."""
    return f"{code.co_filename}:{code.co_firstlineno} {code.co_name}"


# Frames of a thread that waits (for a lock, an event, a thread's start): a loop stuck in
# one of these waits for the GIL its holder keeps, it computes nothing.
_WAITS = frozenset(
    {
        ("threading.py", "wait"),
        ("threading.py", "_wait_for_tstate_lock"),
        ("threading.py", "join"),
        ("queue.py", "get"),
        ("queue.py", "put"),
    }
)


def _loop_ran_user_code(look: Look) -> bool:
    """Whether the dump of an interval the watchdog was blind to shows the loop in user code.

    Rather than waiting in its selector, or in a lock or an event (``run_in_executor``
    starting a pool thread), for the GIL a thread of the user held.
    """
    if look.sampled and not look.late:
        return False
    stack = look.dump_stack
    if stack and _waits(stack[-1]):
        return False
    return frames.running_user_line(stack) is not None


def _waits(line: str) -> bool:
    filename, function = frames.file_and_function(line)
    return (filename.rpartition("/")[2], function) in _WAITS


def _holder_sample(holder: Holder) -> Sample:
    code = holder.code
    if code is None or _runs(holder.stack, code.co_filename, code.co_name):
        culprit = frames.culprit_of(holder.stack) if holder.stack else "unknown"
    else:
        # The call returned before the watchdog got the GIL back: name its target.
        culprit = where(code)
    return Sample(culprit, holder.worker, "gil", list(holder.stack))


def _again(previous: Sample, cause: causes.Cause) -> Sample:
    return replace(previous, cause=cause)


def _runs(stack: tuple[str, ...], filename: str, function: str) -> bool:
    """Whether ``function`` of ``filename`` is on ``stack``."""
    return any(line.startswith(filename + ":") and line.endswith(" " + function) for line in stack)
