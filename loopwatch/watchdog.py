"""StallWatchdog: a thread that follows a stuck loop while it is stuck and says why.

Healthy, it wakes about once per ``stall_threshold`` and takes the GIL for
microseconds: a baseline reading of the thread clocks and the loop thread's run-queue
wait, and faulthandler re-armed at most once a second. When the probe's heartbeat is
``stall_threshold`` overdue it samples every ``SAMPLE_S`` until the loop comes back:
the loop thread's stack, the worker or task on it, and the evidence of ``causes``. Each
interval between samples is charged to what the sample saw, so a stall made of several
blocks is split by culprit, and the seconds add up to the stall's duration.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol

from loopwatch import causes, frames
from loopwatch.attribution import Call, Holder, Look, attribute, where
from loopwatch.dump import NativeDump, cut_culprit, stack_in_dump, threads_if_cut
from loopwatch.events import emit
from loopwatch.occupant import POOL_CALLS, Occupant, code_of
from loopwatch.stall import Sample, Stall, StallEvent
from loopwatch.taskcontext import context_of
from loopwatch.throttle import LogThrottle

if TYPE_CHECKING:
    from loopwatch.host import WatchdogHost
    from loopwatch.metrics import WatchMetrics

log = logging.getLogger("loopwatch")

# Repeats of the same culprit within this window become one summary line.
AGGREGATE_WINDOW_S = 10.0
SAMPLE_S = 0.01
# A stall still going this long after its threshold is logged while it lasts.
ONGOING_AFTER_S = 0.5
# The watchdog woke this much later than it asked: some thread held the GIL meanwhile.
LATE_S = 0.02
# Finished stalls kept for a live view (``loopwatch top``), newest last.
RECENT_STALLS = 20
# How far up the loop thread's stack a request's middleware frame is looked for.
MAX_STACK_DEPTH = 256
SUMMARY_KEYS = ("duration", "cause", "culprit", "worker", "request", "task")

Emit = Callable[[dict[str, Any]], None]
OnStall = Callable[[StallEvent], None]


class Heartbeat(Protocol):
    """What the watchdog reads of the loop, from its own thread: when it last beat.

    ``LagProbe`` beats with a timer on the loop; ``loopwatch.beats`` without one (a
    loop's selector, trio's task steps), for loops whose timer queue must stay untouched.
    """

    @property
    def last_beat(self) -> float:
        """The last moment the loop was known free; ``resolution_s`` after, it is overdue."""

    @property
    def resolution_s(self) -> float:
        """How often the loop beats when free (0: it says when it is busy)."""

    @property
    def stall_threshold_s(self) -> float:
        """Overdue this long, the loop is stalled."""

    @property
    def last_long_lag(self) -> tuple[float, float]:
        """(the beat a stall followed, its length), set by the loop's thread at its end."""


class StallWatchdog:
    """Watches the probe's heartbeat from a thread of its own (see the module docstring)."""

    def __init__(
        self,
        probe: Heartbeat,
        metrics: WatchMetrics | None,
        occupant: Occupant,
        *,
        dump_after_s: float = 10.0,
        aggregate_window_s: float = AGGREGATE_WINDOW_S,
        emit: Emit | None = None,
        on_stall: OnStall | None = None,
        host: WatchdogHost | None = None,
        dump_reader: bool = False,
    ) -> None:
        self._probe = probe
        # A process that reads the native dump from outside while no thread here runs.
        self._dump_reader = dump_reader
        # Stall seconds the loop thread spent off the CPU and not waiting for one (blocked,
        # or waiting for the GIL): with its CPU and run-queue times, the loop's busy time
        # where no selector is timed.
        self.offcpu_s = 0.0
        # Watching many short-lived loops one after another (a test suite): a host's
        # thread runs this watchdog at each ``start`` and parks between them, with the
        # dump kept armed. Without one, each ``start`` has a thread of its own.
        self._host = host
        self._metrics = metrics
        self._occupant = occupant
        self._emit = emit if emit is not None else _log_stall
        self._on_stall = on_stall
        self._throttle = LogThrottle(self._emit, aggregate_window_s, value_name="duration")
        self._dump_after_s = dump_after_s
        self._dump: NativeDump | None = None
        self._gc = causes.GcTracker()
        self._stopped = threading.Event()
        self._stopped.set()  # until ``start``
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_ident = 0
        self._loop_is_gone = False
        self._loop_native_id: int | None = None
        self._baseline: causes.Reading | None = None
        self._baseline_thread: int | None = None
        self._run_queue: causes.RunQueue | None = None  # the loop thread's, while watched
        self._own_queue: causes.RunQueue | None = None  # the thread that runs this one's
        self._wake_due = 0.0
        self._reported_beat = 0.0
        # The beat of the last stall whose report has been handed over: ``_reported_beat``
        # is set first (so no other look reports it twice), this once it is delivered.
        self._delivered_beat = 0.0
        self.stalls = 0
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_STALLS)

    def start(
        self, loop: asyncio.AbstractEventLoop | None, heartbeat: Heartbeat | None = None
    ) -> None:
        """Start watching ``loop`` from its thread (None: a loop not asyncio's, trio's).

        ``heartbeat`` replaces the one given at construction from now on: a test's loop
        comes with its own (``loopwatch.beats``).
        """
        if heartbeat is not None:
            self._probe = heartbeat
        self._loop = loop
        self._loop_ident = threading.get_ident()
        self._loop_native_id = threading.get_native_id()
        self._stopped.clear()
        self._loop_is_gone = False
        self._gc.install()
        if self._dump_after_s > 0 and self._dump is None:
            # A pipe per start: stop closes it, and a watcher may be started again (an
            # ASGI app's lifespan, run once per test client). A kept thread keeps it.
            self._dump = NativeDump(
                self._dump_after_s,
                reader_for=self._loop_ident if self._dump_reader else None,
                native_id=self._loop_native_id,
            )
            self._dump.keep_armed()  # now: the first call may hold the GIL before we run
        if self._metrics is not None:
            self._metrics.event_loop_stall.set_function(self.current_stall_s)
        if self._host is not None:
            if self._dump is not None:
                self._dump.take()  # a dump written while parked is of no stall of ours
                self._dump.keep_armed()  # now: the test may hold the GIL before we run
            if self._baseline is not None and self._baseline_thread != self._loop_native_id:
                self._baseline = None  # another thread's figures: read afresh
            self._host.run(self)
            return
        self._thread = threading.Thread(target=self.run, name="loopwatch-watchdog", daemon=True)
        self._thread.start()

    def retarget(self, loop: asyncio.AbstractEventLoop | None, heartbeat: Heartbeat) -> None:
        """Watch another loop from now on, without stopping (call from that loop's thread).

        For a test session: a watchdog left running between tests on an idle heartbeat
        is pointed at the next test's loop, with no hand-over to its thread. Only when
        ``unreported`` is false: a stall still to report needs ``stop``.
        """
        native_id = threading.get_native_id()
        if self._baseline_thread != native_id:
            self._baseline = None  # another thread's figures: read afresh
        self._loop = loop
        self._loop_ident = threading.get_ident()
        self._loop_native_id = native_id
        self._probe = heartbeat

    @property
    def running(self) -> bool:
        """Whether it watches (started, and neither stopped nor ended by its loop's close)."""
        return not self._stopped.is_set()

    def unreported(self) -> bool:
        """Whether the heartbeat holds a stall that no report has covered yet."""
        return self._probe.last_long_lag[0] > self._delivered_beat

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop watching; a stall still in progress and held-back repeats are logged.

        With a host, its thread has left the loop by the time this returns, and the dump
        stays armed for the next ``start``; ``close`` ends it.
        """
        self._stopped.set()
        if self._host is not None:
            self._host.wait_parked(timeout_s)
        elif self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self._gc.uninstall()
        if self._dump is not None and self._host is None:
            self._dump.close()
            self._dump = None
        self._throttle.flush(force=True)
        if self._metrics is not None:
            self._metrics.event_loop_stall.set_function(lambda: 0.0)

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop, and close a dump kept armed between starts (a hosted watchdog's)."""
        self.stop(timeout_s)
        if self._dump is not None:
            self._dump.close()
            self._dump = None

    def keep_dump_armed(self) -> float | None:
        """Push the dump's deadline forward; how often to, None without a dump (a host's)."""
        dump = self._dump
        if dump is None:
            return None
        dump.keep_armed()
        return dump.rearm_s

    def _loop_gone(self) -> None:
        """The watched loop was closed without ``stop``: end watching, report nothing."""
        self._loop_is_gone = True
        self._stopped.set()
        self._gc.uninstall()
        if self._dump is not None:
            self._dump.close()
            self._dump = None

    def current_stall_s(self) -> float:
        """Length of the stall in progress, 0 when the loop is responsive."""
        if self._stopped.is_set():
            return 0.0
        overdue = perf_counter() - self._probe.last_beat - self._probe.resolution_s
        return overdue if overdue >= self._probe.stall_threshold_s else 0.0

    def _read(self, *, state: bool = False) -> causes.Reading:
        # Retargeted to another loop thread, or run by another host thread: new files.
        self._run_queue = queue = _run_queue_of(self._run_queue, self._loop_native_id)
        self._own_queue = own = _run_queue_of(self._own_queue, threading.get_native_id())
        return causes.read(self._loop_ident, queue, threading.get_ident(), own, state=state)

    def run(self) -> None:
        """Watch until stopped (the body of the watchdog's thread, or of its host's)."""
        while not self._stopped.is_set():
            try:
                self._watch()
            except Exception:
                # The watchdog must outlive any bug of its own: log it, then go on.
                emit(
                    log,
                    logging.ERROR,
                    "watchdog_error",
                    "the stall watchdog failed; it goes on",
                    exc_info=True,
                )
                self._stopped.wait(1.0)
        self._last_look()
        for queue in (self._run_queue, self._own_queue):
            if queue is not None:
                queue.close()  # its reader's to close: this thread's
        self._run_queue = self._own_queue = None

    def _last_look(self) -> None:
        """Report a stall that ended just before ``stop`` and that no look has seen yet.

        A test whose last step blocks ends with it: the loop thread marks the stall's end
        and stops the watchdog at once, so this look, not a wait, reports it.
        """
        if self._loop_is_gone or self._probe.last_long_lag[0] <= self._reported_beat:
            return  # the usual case: nothing unseen, nothing to read
        try:
            reading = self._read()
            if self._baseline is None:
                self._baseline = reading  # never ran (the GIL was held from the start)
            self._report_unseen(reading)
            if self._probe.last_long_lag[0] > self._reported_beat:
                self._baseline = reading  # read as the stall ended: once more, after it
                self._report_unseen(self._read())
        except Exception:
            emit(log, logging.ERROR, "watchdog_error", "the stall watchdog failed; it goes on",
                 exc_info=True)  # fmt: skip

    def _watch(self) -> None:
        self._baseline = self._read()
        self._baseline_thread = self._loop_native_id
        while not self._stopped.is_set():
            beat = self._probe.last_beat
            threshold = self._probe.stall_threshold_s
            overdue = perf_counter() - beat - self._probe.resolution_s
            if overdue >= threshold:
                if self._loop is not None and self._loop.is_closed():
                    self._loop_gone()  # not a stall: nothing will ever run on it again
                    return
                self._follow(beat)
                continue
            reading = self._read()
            self._report_unseen(reading)
            self._baseline = reading
            self._throttle.flush()
            # Not if the loop got stuck while we read: re-arming then would put off (or
            # cancel) the dump of that very stall.
            if self._dump is not None and perf_counter() - self._probe.last_beat < threshold:
                self._dump.keep_armed()
            wait_s = threshold - overdue + 0.001
            self._wake_due = perf_counter() + wait_s
            self._stopped.wait(wait_s)

    def _follow(self, beat: float) -> None:
        probe = self._probe
        stall = Stall(beat=beat, start=beat + probe.resolution_s)
        prev = self._baseline or self._read()
        last: Sample | None = None
        while True:
            reading = self._read(state=True)
            came_back = probe.last_beat != beat
            # The first interval starts at the stall's start: back-dated to the first sample.
            begin = stall.start if last is None else prev.at
            # Back before this look: the loop's stack is of what came after.
            look = self._gather(prev, reading, stall, begin, sampled=not came_back, last=last)
            verdict, sample = self._attribute(stall, look)
            # Back, the stall ended before this look: maybe long before, when a second
            # stall kept the watchdog off the GIL. Its seconds are the next stall's.
            end = (self._ended_at(stall) or reading.at) if came_back else reading.at
            seconds = max(0.0, min(end, reading.at) - begin)
            span = reading.at - prev.at
            if (
                came_back
                and last is not None
                and (seconds < causes.MOST * span or span <= SAMPLE_S + LATE_S)
            ):
                # This look's figures mix the stall's last stretch with the loop idle
                # again after it (they read "wait"), and it took no stack: on time or
                # mostly after the stall, the stretch goes on as the look before saw it,
                # with the evidence kept: the run-queue wait the kernel added as the
                # loop ran again is the stall's (a starved one's, all of it).
                stall.charge(last, seconds, verdict)
            else:
                stall.charge(sample, seconds, verdict)
            prev, last = reading, sample
            if came_back:
                break
            if not stall.counted and reading.at - stall.start >= (
                probe.stall_threshold_s + ONGOING_AFTER_S
            ):
                self._report(stall, reading.at - stall.start, ongoing=True)
            self._wake_due = perf_counter() + SAMPLE_S
            if self._stopped.wait(SAMPLE_S):
                break
        self._finish(stall, prev, last)

    def _ended_at(self, stall: Stall) -> float | None:
        """When the loop came back from ``stall`` (perf_counter), None while it lasts."""
        long_beat, long_lag = self._probe.last_long_lag
        if long_beat == stall.beat:
            return stall.start + long_lag
        if long_beat > stall.beat:
            # Stuck again since (the watchdog, kept off the GIL, looks back at both):
            # the later stall began at or after this one's end.
            return long_beat
        return None

    def _finish(self, stall: Stall, prev: causes.Reading, last: Sample | None) -> None:
        # Still stuck when we are stopping, or the probe stopped: up to now.
        end = self._ended_at(stall)
        duration = (end if end is not None else perf_counter()) - stall.start
        tail = stall.start + duration - prev.at
        if tail > 0 and last is not None:
            stall.charge(last, tail, causes.Verdict(last.cause, loop_cpu_s=0.0))
        stall.fit(duration)
        after = self._read()
        if end is not None:
            # The kernel adds a wait for a CPU when the thread runs again: the loop did as
            # the stall ended, maybe just after the look that found it back.
            late_wait = causes.waited_s(prev.loop_queue_s, after.loop_queue_s)
            stall.queue_wait_s += min(late_wait, duration)
        stall.account_late_queue_wait(duration)
        self._count(stall)
        # Its run-queue wait is in the loop thread's own figure (the utilization estimate).
        self.offcpu_s += max(0.0, duration - stall.loop_cpu_s - stall.queue_wait_s)
        self._reported_beat = stall.beat
        # Stuck again since, and back (a second block we were kept off the GIL for): the
        # last look before it is the baseline of that unseen stall, not this late one.
        self._baseline = prev if self._probe.last_long_lag[0] > stall.beat else after
        self._report(stall, duration, ongoing=False)
        self._delivered_beat = max(self._delivered_beat, stall.beat)

    def _report_unseen(self, reading: causes.Reading) -> None:
        """Report a stall the watchdog never saw: the GIL was held from its start to its end."""
        long_beat, long_lag = self._probe.last_long_lag
        if long_beat <= self._reported_beat or self._baseline is None:
            return
        stall = Stall(beat=long_beat, start=long_beat + self._probe.resolution_s)
        if reading.at < stall.start + long_lag:
            # The reading's clocks were taken before the stall ended: the stall's holder
            # took the GIL from us while we read. Its figures are of before; the next
            # look's are of after, with this one as their baseline.
            return
        self._reported_beat = long_beat
        look = self._gather(self._baseline, reading, stall, stall.start, sampled=False)
        verdict, sample = self._attribute(stall, look)
        stall.charge(sample, long_lag, verdict)
        stall.fit(long_lag)
        self._count(stall)
        self._report(stall, long_lag, ongoing=False)
        self._delivered_beat = max(self._delivered_beat, long_beat)

    def _gather(
        self,
        prev: causes.Reading,
        reading: causes.Reading,
        stall: Stall,
        begin: float,
        *,
        sampled: bool,
        last: Sample | None = None,
    ) -> Look:
        """Everything ``attribute`` decides the interval from ``begin`` to ``reading`` on."""
        # Late for want of a CPU is no sign of a GIL holder: the host did not run us.
        late = reading.at - self._wake_due - causes.own_wait_s(prev, reading) > LATE_S
        gc_s, generation = self._gc.overlap(prev.at, reading.at)
        if self._dump is not None:
            # The one place the dump is read: it goes with the stall it was written in.
            dump = self._dump.take(stall.start, self._ended_at(stall) or reading.at)
            if dump is not None:
                stall.dump = dump
                stall.dump_stack = tuple(stack_in_dump(dump, self._loop_ident))
                dumped = threads_if_cut(dump)
                if dumped is not None and not stall.dump_stack:
                    stall.dump_cut = cut_culprit(dumped, threading.active_count())
        gc_trigger: tuple[str, ...] = ()
        gc_worker = None
        if gc_s > 0:
            found = self._gc.stack_during(begin, reading.at)
            if found is not None:
                gc_trigger = tuple(found[0])
                if found[1] != self._loop_ident:
                    gc_worker = POOL_CALLS.get(found[1], (None, None))[0]
        task, request, context = self._task_and_request()
        last_worker, fn, start, end = self._occupant.last
        return Look(
            prev,
            reading,
            begin,
            late=late,
            sampled=sampled,
            loop_stack=tuple(frames.thread_stack(self._loop_ident)) if sampled else (),
            dump_stack=stall.dump_stack,
            dump_cut=stall.dump_cut,
            gc_s=gc_s,
            gc_generation=generation,
            gc_trigger=gc_trigger,
            gc_worker=gc_worker,
            holder=self._holder(prev, reading) if late else None,
            worker=self._occupant.worker,
            last_call=None if fn is None else Call(last_worker, _definition(fn), start, end),
            task=task,
            request=request,
            context=context,
            previous=last,
        )

    def _holder(self, prev: causes.Reading, reading: causes.Reading) -> Holder | None:
        """The thread that used the most CPU while the watchdog was kept off the GIL."""
        ident, _ = causes.busiest_thread(prev, reading)
        if ident is None:
            return None
        worker, code = POOL_CALLS.get(ident, (None, None))
        stack = tuple(frames.thread_stack(ident))
        return Holder(_thread_name(ident), stack, worker or None, code)

    def _attribute(self, stall: Stall, look: Look) -> tuple[causes.Verdict, Sample]:
        found = attribute(look)
        stall.holders.update(found.holders)
        return found.verdict, found.sample

    def _task_and_request(self) -> tuple[str | None, str | None, contextvars.Context | None]:
        loop = self._loop
        if loop is None:
            return None, None, None
        try:
            task = asyncio.current_task(loop)
        except RuntimeError:
            return None, None, None
        if task is None:
            return None, None, None
        coro = task.get_coro()
        name = getattr(coro, "__qualname__", type(coro).__name__)
        request = self._occupant.requests.get(task)
        if request is None and self._occupant.request_frames:
            request = self._request_on_stack()
        named = f"{task.get_name()} ({name})"
        # A snapshot (O(1)): by the stall's end the task may have left its span.
        context = context_of(task)
        snapshot = None if context is None else context.copy()
        return named, None if request is None else str(request), snapshot

    def _request_on_stack(self) -> object | None:
        """The request whose middleware frame is on the loop thread's stack, if any."""
        namers = self._occupant.request_frames
        frame = sys._current_frames().get(self._loop_ident)
        depth = 0
        while frame is not None and depth < MAX_STACK_DEPTH:
            namer = namers.get(frame.f_code)
            if namer is not None:
                return namer(frame)
            frame = frame.f_back
            depth += 1
        return None

    def _count(self, stall: Stall) -> None:
        """Add an ended stall's seconds to the counters, by its final worker and cause.

        Only at its end: the kernel accounts a wait for a CPU when the thread runs again,
        which turns stretches read as ``cpu`` or ``unknown`` into ``starved``, and the
        probe's measure rescales them. A counter cannot take back what it was given.
        """
        gil_stalls = self._occupant.gil_stalls
        for (_, worker, cause), seconds in stall.seconds.items():
            if self._metrics is not None:
                self._metrics.event_loop_blocked.labels(worker or "", cause).inc(seconds)
            if cause == "gil" and worker:
                gil_stalls[worker] = gil_stalls.get(worker, 0.0) + seconds

    def _report(self, stall: Stall, duration: float, *, ongoing: bool) -> None:
        event = stall.event(duration, ongoing=ongoing)
        if self._on_stall is not None:
            self._deliver(event)
        fields = event.as_dict()
        if not ongoing:
            self.recent.append(_summary(fields))
        if not stall.counted:
            stall.counted = True
            self.stalls += 1
            if self._metrics is not None:
                self._metrics.event_loop_stalls.inc()
            if not ongoing:
                # A stall seen only at its end: repeats of one culprit are aggregated.
                self._throttle.offer((fields["worker"], fields["culprit"]), fields, duration)
                return
        self._emit(fields)

    def _deliver(self, event: StallEvent) -> None:
        assert self._on_stall is not None
        hand_over(self._on_stall, event)


def hand_over(receiver: OnStall, event: StallEvent) -> None:
    """Give ``event`` to ``receiver``; its bug is logged, never raised into the watching."""
    try:
        receiver(event)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        emit(log, logging.WARNING, "stall_receiver_failed", f"a stall receiver failed: {error}",
             error=error)  # fmt: skip


def _summary(fields: dict[str, Any]) -> dict[str, Any]:
    """A finished stall as ``recent`` keeps it: when it ended, and what held the loop."""
    kept = {k: fields[k] for k in SUMMARY_KEYS if fields.get(k) is not None}
    return {"at": round(time.time(), 3), **kept}


def _run_queue_of(queue: causes.RunQueue | None, native_id: int | None) -> causes.RunQueue | None:
    """``queue`` if it reads ``native_id``'s figure; else closed, and one that does."""
    if queue is not None and queue.native_id == native_id:
        return queue
    if queue is not None:
        queue.close()
    return None if native_id is None else causes.RunQueue(native_id)


def _definition(fn: Any) -> str | None:
    """``file:line function`` of where ``fn`` is defined, None for builtins."""
    code = code_of(fn)
    return None if code is None else where(code)


def _thread_name(ident: int) -> str:
    """A live thread's name, else its ident."""
    return next((t.name for t in threading.enumerate() if t.ident == ident), str(ident))


class StackLines(list[str]):
    """A stack as a list of lines (JSON), that structlog's ConsoleRenderer prints too.

    ConsoleRenderer pops ``stack`` and prepends a newline to it, expecting a string.
    """

    def __radd__(self, other: str) -> str:
        # A console: a file or function name may carry terminal escapes.
        return other + "\n".join(frames.printable(line) for line in self)


def _log_stall(fields: dict[str, Any]) -> None:
    emit(
        log,
        logging.WARNING,
        "stall",
        stall_message(fields),
        **{**fields, "stack": StackLines(fields["stack"])},
    )


def stall_message(fields: dict[str, Any]) -> str:
    """A stall in one line: how long, why, where, and whose."""
    still = "still stuck" if fields.get("ongoing") else "stall"
    text = f"{still}: {fields['duration']:.3f} s ({fields['cause']}) at {fields['culprit']}"
    for key in ("worker", "request", "task"):
        if fields.get(key):
            text += f", {key} {fields[key]}"
    repeats = fields.get("repeats")
    if repeats:
        text += f" (and {repeats} more like it)"
    return text
