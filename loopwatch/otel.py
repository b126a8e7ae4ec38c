"""OpenTelemetry: every watched loop's delay, utilization and stalls, and each stall a span.

``LoopwatchInstrumentor().instrument()`` (or ``opentelemetry-instrument``, through the
``opentelemetry_instrumentor`` entry point) reports every ``Watcher`` of the process, and
watches every loop that runs without one: asyncio's and uvloop's, uvicorn's included.
The names follow Node.js's event-loop conventions where Node has one (``nodejs.eventloop.*``
becomes ``asyncio.eventloop.*``); the delay is the probe's whole histogram, not gauges.

A stall's span is emitted when the stall ends: an SDK exports a span only once it has
ended. It is back-dated to the stall's start and is the child of the span current in
the blocked task (the request's, under an instrumented server).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

try:
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
        BaseInstrumentor,
    )
    from opentelemetry.metrics import CallbackOptions, Observation, get_meter
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError('loopwatch.otel needs OpenTelemetry: pip install "loopwatch[otel]"') from exc

from loopwatch import taskcontext
from loopwatch.metrics import LAG_BUCKETS
from loopwatch.stall import StallEvent
from loopwatch.watcher import Watcher, off_watchers, on_watchers

SCOPE = "loopwatch"
SPAN_NAME = "asyncio.eventloop.stall"
CAUSE = "loopwatch.stall.cause"
WORKER = "loopwatch.worker"
STATE = "asyncio.eventloop.state"
# Probe samples kept for the next collection: 10 minutes at 10 ms.
MAX_PENDING = 60_000
STALL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

__all__ = ["LoopwatchInstrumentor"]


class LoopwatchInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Reports loopwatch's watchers to OpenTelemetry; watches loops that have none.

    ``instrument(meter_provider=..., tracer_provider=..., watch_every_loop=True)``; the
    global providers when not given. ``uninstrument()`` stops it all.
    """

    _telemetry: _Telemetry | None = None
    _autowatch: _AutoWatch | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        """None: asyncio is in the standard library, uvloop is watched when present."""
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        from loopwatch import __version__  # noqa: PLC0415 - the package imports us lazily

        meter = get_meter(SCOPE, __version__, kwargs.get("meter_provider"))
        tracer = trace.get_tracer(SCOPE, __version__, kwargs.get("tracer_provider"))
        self._telemetry = _Telemetry(meter, tracer)
        if kwargs.get("watch_every_loop", True):
            self._autowatch = _AutoWatch()
        on_watchers(self._telemetry.attach, self._telemetry.detach)
        if self._autowatch is not None:
            self._autowatch.install()

    def _uninstrument(self, **kwargs: Any) -> None:  # noqa: ARG002 - the base's signature
        telemetry, self._telemetry = self._telemetry, None
        autowatch, self._autowatch = self._autowatch, None
        if autowatch is not None:
            autowatch.uninstall()
        if telemetry is not None:
            off_watchers(telemetry.attach, telemetry.detach)
            telemetry.close()


class _Telemetry:
    """The instruments, and the watchers they report (any thread may scrape them)."""

    def __init__(self, meter: Any, tracer: trace.Tracer) -> None:
        self._tracer = tracer
        self._lock = threading.Lock()
        # id -> (watcher, its samples waiting for a collection, (busy, wall) seconds when
        # it was attached).
        self._watchers: dict[int, tuple[Watcher, deque[float], tuple[float, float]]] = {}
        self._last: tuple[float, float] | None = None
        # Active and idle seconds of the watchers detached so far: the counters go on.
        self._done = (0.0, 0.0)
        self._closed = False
        self.delay = meter.create_histogram(
            "asyncio.eventloop.delay",
            unit="s",
            description="How late the event loop ran a timer due now: time it could not "
            "run callbacks (loopwatch's lag probe).",
            explicit_bucket_boundaries_advisory=list(LAG_BUCKETS),
        )
        self.stall = meter.create_histogram(
            "asyncio.eventloop.stall.duration",
            unit="s",
            description="Stalls: the event loop blocked for longer than the threshold.",
            explicit_bucket_boundaries_advisory=list(STALL_BUCKETS),
        )
        meter.create_observable_gauge(
            "asyncio.eventloop.utilization",
            callbacks=[self._utilization],
            unit="1",
            description="Share of the time the event loop was busy since the last collection.",
        )
        meter.create_observable_counter(
            "asyncio.eventloop.time",
            callbacks=[self._time],
            unit="s",
            description="Time the event loop spent active (running callbacks) or idle.",
        )

    def attach(self, watcher: Watcher) -> None:
        """Report ``watcher`` (called as it starts, on its loop's thread)."""
        # The probe's samples wait here for the next collection: recorded then, off the
        # loop (a histogram record is ~70 us cold, 100 times a second).
        samples: deque[float] = deque(maxlen=MAX_PENDING)
        with self._lock:
            if self._closed:
                return
            busy = watcher.busy_s() if watcher.busy_s is not None else 0.0
            self._watchers[id(watcher)] = (watcher, samples, (busy, time.perf_counter()))
        watcher.probe.buffers = (*watcher.probe.buffers, samples)
        watcher.add_stall_listener(self._on_stall)

    def detach(self, watcher: Watcher) -> None:
        """Stop reporting ``watcher`` (called as it stops)."""
        with self._lock:
            found = self._watchers.pop(id(watcher), None)
            if found is None:
                return
            _, samples, since = found
            active, idle = _seconds(watcher, since, time.perf_counter())
            self._done = (self._done[0] + active, self._done[1] + idle)
        watcher.probe.buffers = tuple(b for b in watcher.probe.buffers if b is not samples)
        watcher.remove_stall_listener(self._on_stall)
        self._record(samples)

    def _drain(self) -> None:
        """Record every probe sample taken since the last collection."""
        with self._lock:
            buffers = [samples for _, samples, _ in self._watchers.values()]
        for samples in buffers:
            self._record(samples)

    def _record(self, samples: deque[float]) -> None:
        record = self.delay.record
        while samples:
            record(samples.popleft())

    def close(self) -> None:
        """Detach every watcher; observable callbacks report nothing from now on."""
        with self._lock:
            self._closed = True
            watchers = [w for w, _, _ in self._watchers.values()]
        for watcher in watchers:
            self.detach(watcher)

    def _totals(self) -> tuple[float, float]:
        """Active and idle seconds of the loops watched, since each watcher was attached."""
        now = time.perf_counter()
        with self._lock:
            items = [(w, since) for w, _, since in self._watchers.values()]
            active, idle = self._done
        for watcher, since in items:
            more_active, more_idle = _seconds(watcher, since, now)
            active, idle = active + more_active, idle + more_idle
        return active, idle

    def _time(self, _: CallbackOptions) -> Iterable[Observation]:
        # Observable callbacks run first at each collection: the delay's samples too.
        self._drain()
        active, idle = self._totals()
        yield Observation(active, {STATE: "active"})
        yield Observation(idle, {STATE: "idle"})

    def _utilization(self, _: CallbackOptions) -> Iterator[Observation]:
        self._drain()
        totals = self._totals()
        last, self._last = self._last, totals
        active, idle = totals
        if last is not None and active + idle > sum(last):
            active, idle = active - last[0], idle - last[1]
        if active + idle > 0:
            yield Observation(max(0.0, min(1.0, active / (active + idle))))

    def _on_stall(self, event: StallEvent) -> None:
        if event.ongoing:
            return  # an SDK exports a span once it ended: the stall's end makes it
        attributes: dict[str, str] = {CAUSE: event.cause}
        if event.worker:
            attributes[WORKER] = event.worker
        self.stall.record(event.duration, attributes)
        self._span(event)

    def _span(self, event: StallEvent) -> None:
        start_ns = int(event.started * 1e9)
        end_ns = start_ns + int(event.duration * 1e9)
        span = self._tracer.start_span(
            SPAN_NAME,
            context=_parent(event.context),
            kind=trace.SpanKind.INTERNAL,
            start_time=start_ns,
            attributes={
                **_code_attributes(event.culprit),
                CAUSE: event.cause,
                "loopwatch.stall.duration": event.duration,
                **({WORKER: event.worker} if event.worker else {}),
                **({"loopwatch.task": event.task} if event.task else {}),
            },
        )
        for other in event.culprits[1:]:
            span.add_event(
                "loopwatch.stall.culprit",
                {
                    **_code_attributes(other.culprit),
                    CAUSE: other.cause,
                    "loopwatch.stall.seconds": other.seconds,
                    **({WORKER: other.worker} if other.worker else {}),
                },
                timestamp=end_ns,
            )
        span.end(end_time=end_ns)


def _seconds(watcher: Watcher, since: tuple[float, float], now: float) -> tuple[float, float]:
    """Active and idle seconds of ``watcher``'s loop from ``since`` (busy, wall) to now."""
    busy_s = watcher.busy_s
    if busy_s is None:
        return 0.0, 0.0
    wall = now - since[1]
    busy = min(max(0.0, busy_s() - since[0]), wall)
    return busy, max(0.0, wall - busy)


def _parent(context: contextvars.Context | None) -> Context | None:
    """The OpenTelemetry context current in a task's ``contextvars`` context, if any."""
    if context is None:
        return None
    for var, value in context.items():
        # The runtime context is one ContextVar holding an OpenTelemetry Context.
        if isinstance(value, Context) and var.name == "current_context":
            return value
    return None


def _code_attributes(culprit: str) -> dict[str, str | int]:
    """``code.*`` attributes of a ``file:line function`` culprit."""
    where, _, function = culprit.rpartition(" ")
    path, _, line = where.rpartition(":")
    if not path or not line.isdigit():
        return {"code.function.name": culprit}
    return {"code.file.path": path, "code.line.number": int(line), "code.function.name": function}


class _AutoWatch:
    """Watches each loop while it runs, when no other watcher does (``run_forever``)."""

    def __init__(self) -> None:
        self._watchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Watcher] = (
            weakref.WeakKeyDictionary()
        )
        self._patched: list[tuple[type, Callable[..., Any]]] = []
        self._others: dict[int, int] = {}  # loops with another watcher: id -> how many

    def install(self) -> None:
        """Wrap ``run_forever`` of asyncio's loops, and of uvloop's when it is installed."""
        classes: list[type] = [asyncio.BaseEventLoop]
        try:
            import uvloop  # noqa: PLC0415 - only when present

            classes.append(uvloop.Loop)
        except ImportError:
            pass
        for cls in classes:
            original = cls.run_forever  # type: ignore[attr-defined]
            cls.run_forever = self._wrap(original)  # type: ignore[attr-defined]
            self._patched.append((cls, original))
        on_watchers(self._started, self._stopped)

    def uninstall(self) -> None:
        """Restore ``run_forever``; loops watched now are watched until they stop."""
        off_watchers(self._started, self._stopped)
        for cls, original in self._patched:
            cls.run_forever = original  # type: ignore[attr-defined]
        self._patched.clear()

    def _wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        autowatch = self

        def run_forever(loop: asyncio.AbstractEventLoop) -> Any:
            watcher = autowatch._start(loop)
            try:
                return original(loop)
            finally:
                if watcher is not None and watcher.loop is loop:
                    watcher.stop()

        run_forever.__wrapped__ = original  # type: ignore[attr-defined]
        return run_forever

    def _start(self, loop: asyncio.AbstractEventLoop) -> Watcher | None:
        if self._others.get(id(loop)):
            return None  # the application's own watcher is on it
        watcher = self._watchers.get(loop)
        if watcher is None:
            from prometheus_client import CollectorRegistry  # noqa: PLC0415

            # Its own registry: the process's default one is the application's.
            # No native dump: faulthandler has one timer per process, the application's.
            watcher = self._watchers[loop] = Watcher(registry=CollectorRegistry(), dump_after=0)
        taskcontext.remember_contexts(loop)
        watcher.start(loop)
        return watcher

    def _started(self, watcher: Watcher) -> None:
        loop = watcher.loop
        if loop is None or self._watchers.get(loop) is watcher:
            return
        self._others[id(loop)] = self._others.get(id(loop), 0) + 1
        ours = self._watchers.get(loop)
        if ours is not None and ours.loop is loop:
            ours.stop()  # the application watches it now: one watcher per loop

    def _stopped(self, watcher: Watcher) -> None:
        loop = watcher.loop
        if loop is None or self._watchers.get(loop) is watcher:
            return
        left = self._others.get(id(loop), 1) - 1
        if left > 0:
            self._others[id(loop)] = left
            return
        self._others.pop(id(loop), None)
        ours = self._watchers.get(loop)
        if ours is not None and ours.loop is None and loop.is_running():
            # Back to watching it ourselves, after the application's watcher.
            loop.call_soon(self._restart, loop, ours)

    def _restart(self, loop: asyncio.AbstractEventLoop, ours: Watcher) -> None:
        if ours.loop is None and not self._others.get(id(loop)) and loop.is_running():
            ours.start(loop)
