"""Watcher: the lag probe and the stall watchdog on one running loop; ``watch()`` for users."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from loopwatch.events import emit
from loopwatch.metrics import WatchMetrics
from loopwatch.occupant import Occupant
from loopwatch.probe import LagProbe
from loopwatch.stall import StallEvent
from loopwatch.utilization import BusyCollector, EstimatedBusyCollector, selector_of
from loopwatch.watchdog import StallWatchdog, hand_over

if TYPE_CHECKING:
    from loopwatch.host import WatchdogHost

log = logging.getLogger("loopwatch")


def check_settings(resolution: float, stall_threshold: float, dump_after: float) -> None:
    """Raise ValueError naming the setting when one is not finite or out of range."""
    for name, value in (
        ("resolution", resolution),
        ("stall_threshold", stall_threshold),
        ("dump_after", dump_after),
    ):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f'"{name}" must be a finite number >= 0: {value!r}')
    if not 0 < resolution <= 1.0:
        raise ValueError(f'"resolution" must be > 0 and <= 1 s: {resolution!r}')
    if stall_threshold <= resolution:
        raise ValueError(
            f'"stall_threshold" ({stall_threshold!r}) must be greater than '
            f'"resolution" ({resolution!r})'
        )


_said: set[str] = set()
# Called with each watcher as it starts watching a loop, and as it stops (on the loop's
# thread): how ``loopwatch.otel`` reports every watcher of the process.
_STARTED: list[Callable[[Watcher], None]] = []
_STOPPED: list[Callable[[Watcher], None]] = []


def on_watchers(started: Callable[[Watcher], None], stopped: Callable[[Watcher], None]) -> None:
    """Call ``started`` with every watcher as it starts, ``stopped`` as it stops."""
    _STARTED.append(started)
    _STOPPED.append(stopped)


def off_watchers(started: Callable[[Watcher], None], stopped: Callable[[Watcher], None]) -> None:
    """Undo ``on_watchers``."""
    with contextlib.suppress(ValueError):
        _STARTED.remove(started)
    with contextlib.suppress(ValueError):
        _STOPPED.remove(stopped)


def _say_utilization_estimated(loop: asyncio.AbstractEventLoop) -> None:
    """Once per kind of loop: loopwatch_event_loop_busy_seconds_total is an estimate there."""
    kind = type(loop).__module__ + "." + type(loop).__qualname__
    if kind not in _said:
        _said.add(kind)
        emit(
            log,
            logging.INFO,
            "loop_utilization_estimated",
            f"loop utilization is estimated on {kind} (not a loopwatch.new_event_loop() loop)",
            loop=kind,
            reason=f"{kind} was not made by loopwatch.new_event_loop(), whose selector is "
            "timed; loopwatch_event_loop_busy_seconds_total is estimated from the loop "
            "thread's CPU clock and its stalls",
            fix="for the exact figure run on loopwatch.new_event_loop() (uvicorn: --loop "
            "loopwatch:new_event_loop; uvloop has no hook for it)",
        )


class Watcher:
    """Watches one running loop: lag into a histogram, stalls logged with their cause.

    Build it anywhere, ``start()`` it from the loop's thread, ``stop()`` it from there too.
    The watchdog is a daemon thread: it never keeps a process alive.
    """

    def __init__(
        self,
        *,
        metrics: WatchMetrics | None = None,
        registry: CollectorRegistry | None = None,
        occupant: Occupant | None = None,
        resolution: float = 0.01,
        stall_threshold: float = 0.1,
        dump_after: float = 10.0,
        on_stall: Callable[[StallEvent], None] | None = None,
        log_stalls: bool = True,
        host: WatchdogHost | None = None,
        dump_reader: bool = False,
    ) -> None:
        check_settings(resolution, stall_threshold, dump_after)
        self._on_stall = on_stall
        self._subscribers: list[_Subscriber] = []
        self._subscribers_lock = threading.Lock()
        self.metrics = metrics if metrics is not None else WatchMetrics.on(registry)
        self.occupant = occupant if occupant is not None else Occupant()
        self.probe = LagProbe(self.metrics.event_loop_lag, resolution, stall_threshold)
        self.watchdog = StallWatchdog(
            self.probe,
            self.metrics,
            self.occupant,
            dump_after_s=dump_after,
            on_stall=self._deliver,
            emit=None if log_stalls else _silent,
            host=host,
            dump_reader=dump_reader,
        )
        self._busy: BusyCollector | EstimatedBusyCollector | None = None
        self._listeners: list[Callable[[StallEvent], None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        # The loop's busy seconds, and when the count began: for utilization elsewhere.
        self.busy_s: Callable[[], float] | None = None

    @property
    def stalls(self) -> int:
        """Stalls reported so far."""
        return self.watchdog.stalls

    def recent_stalls(self) -> list[dict[str, Any]]:
        """The last finished stalls (up to 20), oldest first: when each ended, and its culprit.

        Safe to call from any thread.
        """
        return list(self.watchdog.recent)

    def add_stall_listener(self, listener: Callable[[StallEvent], None]) -> None:
        """Call ``listener`` with each stall too, on the watchdog's thread (as ``on_stall``)."""
        self._listeners = [*self._listeners, listener]

    def remove_stall_listener(self, listener: Callable[[StallEvent], None]) -> None:
        """Stop calling ``listener``."""
        self._listeners = [f for f in self._listeners if f is not listener]

    def _deliver(self, event: StallEvent) -> None:
        """Hand a stall to the callback and the iterators (on the watchdog thread)."""
        first = [] if self._on_stall is None else [self._on_stall]
        for receiver in [*first, *self._listeners]:
            hand_over(receiver, event)  # one receiver's bug must not keep it from the others
        with self._subscribers_lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber.put(event)

    async def stall_events(self) -> AsyncIterator[StallEvent]:
        """Every stall from now on, as a typed event, until watching stops.

        Each stall comes once while the loop is still stuck (``ongoing``, if it lasts)
        and once at its end. The loop being stuck, the ongoing event reaches the
        iterator only once it is free again: a receiver that must act while the loop
        is stuck (a test runner, a crash reporter) passes ``on_stall`` instead, which
        the watchdog's own thread calls at once.
        """
        subscriber = _Subscriber(asyncio.get_running_loop())
        with self._subscribers_lock:
            self._subscribers.append(subscriber)
        try:
            while (event := await subscriber.queue.get()) is not None:
                yield event
        finally:
            with self._subscribers_lock:
                self._subscribers.remove(subscriber)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start watching ``loop`` (the running loop when None), from its thread."""
        loop = asyncio.get_running_loop() if loop is None else loop
        self.loop = loop
        self.probe.start(loop)
        self.watchdog.start(loop)
        selector = selector_of(loop)
        busy: BusyCollector | EstimatedBusyCollector
        if selector is not None:
            busy = BusyCollector(selector)
        else:
            watchdog = self.watchdog
            busy = EstimatedBusyCollector(threading.get_native_id(), lambda: watchdog.offcpu_s)
            _say_utilization_estimated(loop)
        self.busy_s = busy.busy_s
        try:
            self.metrics.registry.register(busy)
            self._busy = busy
        except ValueError:
            # Another watcher on this registry exports it already (the pytest plugin's,
            # around a test that watches too): one figure per registry.
            self._busy = None
        for hook in _STARTED.copy():  # a hook may add or remove one
            hook(self)

    def stop(self) -> None:
        """Stop watching; a stall in progress is logged with what is known of it."""
        if self.loop is not None:
            for hook in _STOPPED.copy():
                hook(self)
        self.watchdog.stop()
        with self._subscribers_lock:
            for subscriber in self._subscribers:
                subscriber.close()
        self.probe.stop()
        if self._busy is not None:
            self.metrics.registry.unregister(self._busy)
            self._busy = None
        self.busy_s = None
        self.loop = None

    def close(self) -> None:
        """Stop, and close the native dump a hosted watcher keeps armed between loops."""
        self.stop()
        self.watchdog.close()

    def reconfigure(self, resolution: float, stall_threshold: float) -> None:
        """Change the probe's period and the stall threshold now (from the loop's thread)."""
        check_settings(resolution, stall_threshold, 0.0)
        self.probe.reconfigure(resolution, stall_threshold)


def _silent(_: dict[str, Any]) -> None:
    """No ``stall`` log line: the receiver of the events reports them its own way."""


class _Subscriber:
    """One ``stall_events()`` iterator: its queue, fed from the watchdog thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[StallEvent | None] = asyncio.Queue()

    def put(self, event: StallEvent) -> None:
        """From the watchdog thread."""
        # A closed loop raises RuntimeError: nobody is iterating any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def close(self) -> None:
        """From the loop's thread: the iteration ends."""
        self.queue.put_nowait(None)


@asynccontextmanager
async def watch(
    registry: CollectorRegistry | None = None,
    resolution: float = 0.01,
    stall_threshold: float = 0.1,
    dump_after: float = 10.0,
    on_stall: Callable[[StallEvent], None] | None = None,
) -> AsyncIterator[Watcher]:
    """Watch the running loop for the duration of the ``async with`` block.

    Stalls are logged as ``stall`` events (stdlib ``logging``, logger ``"loopwatch"``,
    the fields as ``extra``: ``loopwatch.events``) and the
    metrics are registered on ``registry`` (``prometheus_client.REGISTRY`` when None).
    ``on_stall`` receives each stall as a ``StallEvent``, on the watchdog's thread, while
    the loop may still be stuck; ``watcher.stall_events()`` iterates them on the loop.
    Raises ValueError naming a setting that is not finite or out of range. On exit,
    including by cancellation, watching stops and a stall in progress is logged.

    A loop is watched once: a second ``watch()`` on a loop that one watches already (a
    library and the application both watching) shares that watcher, whose settings and
    registry stay the first's; each user's ``on_stall`` gets every stall, and watching
    stops when the last user leaves.
    """
    check_settings(resolution, stall_threshold, dump_after)
    loop = asyncio.get_running_loop()
    shared = _SHARED.get(loop)
    if shared is None:
        watcher = Watcher(
            registry=registry,
            resolution=resolution,
            stall_threshold=stall_threshold,
            dump_after=dump_after,
        )
        watcher.start(loop)
        shared = _SHARED[loop] = _Shared(watcher)
    shared.users += 1
    if on_stall is not None:
        shared.watcher.add_stall_listener(on_stall)
    try:
        yield shared.watcher
    finally:
        if on_stall is not None:
            shared.watcher.remove_stall_listener(on_stall)
        shared.users -= 1
        if not shared.users:
            del _SHARED[loop]
            shared.watcher.stop()


class _Shared:
    """The watcher of a loop and how many ``watch()`` blocks use it now."""

    __slots__ = ("users", "watcher")

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.users = 0


# Loop -> its watch() watcher: one per loop, however many users.
_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Shared] = weakref.WeakKeyDictionary()
