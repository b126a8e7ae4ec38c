"""The ``auto`` strategy: each caller's calls run on a thread or in a process, as evidence says.

Every caller (a daemon worker, or an ``Offload`` name in a service) starts on ``thread``,
safe for any target. Each call is measured where it runs (its CPU and wall time), the
threads that run calls are sampled for whether they hold the GIL
(``loopwatch.gilmeter``), and the watchdog's ``gil`` stall seconds are read per caller.
Every ``window`` the figures go to ``loopwatch.choice.choose``, the rule the bench
shares. A caller moves when ``confirm`` windows in a row agree and it has stayed
``min_dwell`` seconds where it is; one that moves back soon after it left waits twice
as long the next time, so a workload that alternates settles instead of flapping.

A move is a reload of one caller: new calls go to the new strategy, calls in flight
finish where they started, and once the last of them ended, the clients ``setup``
made on the old strategy are closed by the threads that made them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Literal, Self

from loopwatch import targets
from loopwatch.choice import Choice, Evidence, Fit, choose
from loopwatch.crossing import SealedCall, UnpicklableError
from loopwatch.errors import StrategyError
from loopwatch.events import emit
from loopwatch.gilmeter import GilMeter, Measured
from loopwatch.occupant import Occupant
from loopwatch.strategies.base import Call, Strategy, override
from loopwatch.strategies.process import ProcessStrategy
from loopwatch.strategies.thread import ThreadStrategy

log = logging.getLogger("loopwatch.strategies")
Probe = tuple[float, int] | str  # crossing.probe's outcome

Mode = Literal["switch", "advise"]
# A shared pool with calls waiting for a slot in this share of a window's samples is
# named as the bottleneck in the decisions (``/auto``, ``loopwatch top``).
BOTTLENECK_SHARE = 0.5
# How long a caller's old strategy gets to close the clients ``setup`` made there.
CLOSE_CLIENTS_S = 2.0


@dataclass
class _Caller:
    """One caller's place, the evidence gathered for its next decision, and its history."""

    key: str
    since: float
    dwell: float
    strategy: Fit = "thread"
    reason: str = "starts on thread, safe for any target, until its calls are measured"
    switches: int = 0
    calls: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    window_started: float = 0.0
    stall_mark: float = 0.0
    pickle_s: float | None = None
    pickle_bytes: int | None = None
    wanted: Fit | None = None
    streak: int = 0
    advised: Fit | None = None
    # Pickling is probed on a pool thread once a window (``crossing.probe``): off the loop.
    probe_due: bool = True
    told_unpicklable: bool = False
    # A call that could not cross to or from a process: back on thread for good.
    pinned: bool = False
    left_at: dict[str, float] = field(default_factory=dict)
    in_flight: Counter[str] = field(default_factory=Counter)

    def reset_window(self, now: float) -> None:
        self.calls, self.wall_s, self.cpu_s, self.window_started = 0, 0.0, 0.0, now
        self.probe_due = True


class AutoStrategy(Strategy):
    """Runs each caller's calls on ``thread`` or ``process``, whichever the evidence favours.

    In the daemon it shares the ``thread`` and ``process`` strategies of
    ``[executors]`` (``bind``); built alone (``AutoStrategy()``) it makes its own and
    closes them in ``aclose``. Callers are told apart by ``Call.worker`` (an
    ``Offload``'s ``name``), else by the target's qualified name.
    """

    name = "auto"
    # Its settings: loopwatch.daemon.settings (the daemon's [executors.auto] section).
    has_settings = True
    delegates = ("thread", "process")

    def __init__(
        self,
        *,
        mode: Mode = "switch",
        window: float = 5.0,
        confirm: int = 2,
        min_dwell: float = 20.0,
        sample_interval: float = 0.05,
        occupant: Occupant | None = None,
    ) -> None:
        self.mode = mode
        self.window = window
        self.confirm = confirm
        self.min_dwell = min_dwell
        self.sample_interval = sample_interval
        self._occupant = Occupant() if occupant is None else occupant
        self._strategies: dict[str, Strategy] = {}
        self._owned: list[Strategy] = []
        self._starting: dict[str, asyncio.Future[Strategy]] = {}
        self._callers: dict[str, _Caller] = {}
        self._meter = GilMeter()
        self._tick: asyncio.TimerHandle | None = None
        self._tick_loop: asyncio.AbstractEventLoop | None = None
        # Per shared pool, this window: [samples, samples with calls queued, most queued];
        # and what the last window said of it (None: not a bottleneck).
        self._pool_samples: dict[str, list[int]] = {}
        self.bottlenecks: dict[str, str | None] = {}
        self._next_decision = 0.0
        self._closers: set[asyncio.Task[None]] = set()
        self.closed = False

    @override
    @classmethod
    def build(cls, settings: Any, *, occupant: Occupant, factory: str | None = None) -> Self:
        return cls(
            mode=settings.mode,
            window=settings.window,
            confirm=settings.confirm,
            min_dwell=settings.min_dwell,
            sample_interval=settings.sample_interval,
            occupant=occupant,
        )

    @override
    def bind(self, strategies: Mapping[str, Strategy]) -> None:
        self._strategies.update(strategies)

    @override
    async def start(self) -> None:
        self._ensure_ticking()

    @override
    def runs_as(self, caller: str) -> str:
        found = self._callers.get(caller)
        return "thread" if found is None else found.strategy

    @override
    def decisions(self) -> list[dict[str, Any]]:
        """Each caller's strategy now and the reason, for ``loopwatch top`` and the endpoint."""
        return [
            {
                "worker": c.key,
                "strategy": c.strategy,
                "reason": c.reason,
                "switches": c.switches,
                "mode": self.mode,
                **({"advice": c.advised} if self.mode == "advise" and c.advised else {}),
                **(
                    {"bottleneck": self.bottlenecks[c.strategy]}
                    if self.bottlenecks.get(c.strategy)
                    else {}
                ),
            }
            for c in list(self._callers.values())
        ]

    @override
    async def call(self, call: Call, timeout: float) -> Any:
        if self.closed:
            raise StrategyError("auto strategy is closed")
        self._ensure_ticking()
        key = call.worker or _name_of(call.fn)
        caller = self._callers.get(key)
        if caller is None:
            caller = self._new_caller(key)
        name = caller.strategy
        inner = self._strategies.get(name) or await self._own(name)
        caller.in_flight[name] += 1
        try:
            ran = await self._run(caller, name, inner, call, timeout)
        finally:
            caller.in_flight[name] -= 1
            if name != caller.strategy and not caller.in_flight[name]:
                self._close_left_behind(caller, name)
        if ran is None:
            return await self.call(call, timeout)  # its arguments never left: it has not run
        result, cpu_s, wall_s = ran
        if name == caller.strategy:
            caller.calls += 1
            caller.cpu_s += cpu_s
            caller.wall_s += wall_s
        return result

    async def _run(
        self, caller: _Caller, name: str, inner: Strategy, call: Call, limit_s: float
    ) -> tuple[Any, float, float] | None:
        """One call on ``inner``: its outcome, or None when its arguments could not cross."""
        if name == "process":
            # Sealed both ways: what cannot cross fails as UnpicklableError, by side.
            measured = Measured(call.fn, None, seal=True)
            sent = Call(SealedCall(measured, call.args, call.kwargs), {}, call.worker)
        else:
            measured = Measured(call.fn, caller.key, probe=caller.probe_due)
            caller.probe_due = False
            sent = Call(measured, call.kwargs, call.worker, call.args)
        try:
            ran: tuple[Any, float, float] = await inner.call(sent, limit_s)
        except UnpicklableError as exc:
            self._pin_to_thread(caller, exc)
            if exc.side == "result":
                raise  # it ran, once, in the process: running it again would be twice
            return None
        except BaseException:
            caller.probe_due = caller.probe_due or measured.probe
            raise
        if measured.probed is not None:
            self._probed(caller, *measured.probed)
        return ran

    def _probed(self, caller: _Caller, sent: Probe, back: Probe) -> None:
        """A thread call's pickling, probed on its thread: the evidence of the window."""
        if isinstance(sent, tuple) and isinstance(back, tuple):
            caller.pickle_s, caller.pickle_bytes = sent[0] + back[0], sent[1] + back[1]
            return
        caller.pickle_s = float("inf")
        error = sent if isinstance(sent, str) else back
        if caller.told_unpicklable or caller.pinned:
            return  # said once; a pinned caller's reason says why already
        caller.told_unpicklable = True
        caller.reason = (
            f"stays on thread: a process cannot take it, its target, arguments or result "
            f"cannot be pickled ({error})"
        )
        self._say(logging.INFO, "strategy_advice", caller, "thread", caller.reason)

    def _pin_to_thread(self, caller: _Caller, exc: UnpicklableError) -> None:
        """A call could not cross to or from its process: back to thread, for good, said once."""
        if caller.pinned:
            return
        old = caller.strategy
        caller.pinned = True
        caller.pickle_s = float("inf")
        caller.strategy, caller.since = "thread", perf_counter()
        caller.switches += 1
        caller.reason = f"back on thread for good: {exc}"
        self._say(
            logging.WARNING, "strategy_switched", caller, old, f"{old} -> thread: {caller.reason}"
        )

    def _say(self, level: int, event: str, caller: _Caller, source: str, text: str) -> None:
        """Log a caller's staying on, or going back to, ``thread``, with its reason."""
        emit(
            log,
            level,
            event,
            f"{caller.key}: {text}",
            worker=caller.key,
            **_direction(source, "thread"),
            reason=caller.reason,
            mode=self.mode,
        )

    def fit(self, caller: str) -> Choice | None:
        """The rule's choice for ``caller`` on the evidence since its last decision, if any.

        What ``loopwatch bench`` reports: the same rule on the same kind of evidence.
        """
        found = self._callers.get(caller)
        if found is None or not found.calls:
            return None
        return choose(self.evidence(found, perf_counter()))

    def _new_caller(self, key: str) -> _Caller:
        now = perf_counter()
        caller = self._callers[key] = _Caller(key, since=now, dwell=self.min_dwell)
        caller.reset_window(now)
        caller.stall_mark = self._occupant.gil_stalls.get(key, 0.0)
        return caller

    async def _own(self, name: str) -> Strategy:
        """A strategy of our own (library use without ``bind``), started once."""
        starting = self._starting.get(name)
        if starting is None:
            starting = self._starting[name] = asyncio.get_running_loop().create_future()
            # Its delegates' own defaults: ThreadStrategy() or ProcessStrategy().
            strategy: Strategy = ThreadStrategy() if name == "thread" else ProcessStrategy()
            try:
                await strategy.start()
            except BaseException as exc:
                del self._starting[name]
                starting.set_exception(exc)
                starting.exception()  # retrieved: the callers waiting get it raised
                await strategy.aclose(1.0)
                raise
            self._owned.append(strategy)
            self._strategies[name] = strategy
            starting.set_result(strategy)
        return await asyncio.shield(starting)

    def _close_left_behind(self, caller: _Caller, name: str) -> None:
        """The last call on the strategy ``caller`` left ended: close its clients there."""
        strategy = self._strategies.get(name)
        if strategy is None:
            return
        task = asyncio.ensure_future(strategy.close_clients([caller.key], CLOSE_CLIENTS_S))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def _ensure_ticking(self) -> None:
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        if self._tick is not None:
            ticking_on = self._tick_loop
            if ticking_on is loop or (ticking_on is not None and ticking_on.is_running()):
                return
            # Its loop has ended (an asyncio.run before this one): tick on this one now,
            # or no decision would ever come again.
            self._tick.cancel()
        self._tick_loop = loop
        self._next_decision = perf_counter() + self.window
        self._tick = loop.call_later(self.sample_interval, self._on_tick, loop)

    def _on_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._meter.sample()
        self._sample_pools()
        now = perf_counter()
        if now >= self._next_decision:
            self._next_decision = now + self.window
            self._judge_pools()
            for caller in list(self._callers.values()):
                self._decide(caller, now)
        self._tick = loop.call_later(self.sample_interval, self._on_tick, loop)

    def _sample_pools(self) -> None:
        for name in self.delegates:
            strategy = self._strategies.get(name)
            gauges = None if strategy is None else strategy.gauges()
            if gauges is None or gauges.queued is None:
                continue
            found = self._pool_samples.setdefault(name, [0, 0, 0])
            found[0] += 1
            if gauges.queued:
                found[1] += 1
                found[2] = max(found[2], gauges.queued)

    def _judge_pools(self) -> None:
        """Which shared pool made calls wait for a slot in most of the window's samples.

        Callers share the ``thread`` and ``process`` pools: a pool too small for them made
        an I/O caller's calls wait 481 ms at p99, and no decision said so.
        """
        for name, (samples, waiting, most) in self._pool_samples.items():
            strategy = self._strategies.get(name)
            gauges = None if strategy is None else strategy.gauges()
            capacity = None if gauges is None else gauges.capacity
            share = waiting / samples if samples else 0.0
            self.bottlenecks[name] = (
                f"the shared {name} pool is the bottleneck: calls waited for one of its "
                f"{capacity} slots in {share:.0%} of the window (up to {most} at once); "
                f"raise [executors.{name}] max_workers"
                if share >= BOTTLENECK_SHARE
                else None
            )
        self._pool_samples.clear()

    def evidence(self, caller: _Caller, now: float) -> Evidence:
        """The window's figures of ``caller`` (and its meter readings, which are taken)."""
        free, gil = self._meter.take(caller.key)
        stalls = self._occupant.gil_stalls.get(caller.key, 0.0)
        stall_s, caller.stall_mark = stalls - caller.stall_mark, stalls
        on_thread = caller.strategy == "thread"
        return Evidence(
            strategy=caller.strategy,
            window_s=now - caller.window_started,
            calls=caller.calls,
            wall_s=caller.wall_s,
            cpu_s=caller.cpu_s,
            free_samples=free if on_thread else None,
            gil_samples=gil if on_thread else None,
            stall_gil_s=stall_s,
            pickle_s=caller.pickle_s,
            pickle_bytes=caller.pickle_bytes,
        )

    def _decide(self, caller: _Caller, now: float) -> None:
        if not caller.calls or caller.pinned:
            return  # a call longer than the window, or pinned: nothing to decide
        evidence = self.evidence(caller, now)
        caller.reset_window(now)
        choice = choose(evidence)
        if not choice.decided:
            return
        if choice.strategy == caller.strategy:
            caller.wanted, caller.streak = None, 0
            if not caller.switches and not caller.told_unpicklable:
                # A moved caller keeps why it moved; one no process can take, why not.
                caller.reason = choice.reason
            if self.mode == "advise" and caller.advised not in (None, caller.strategy):
                caller.advised = None
            return
        caller.streak = caller.streak + 1 if caller.wanted == choice.strategy else 1
        caller.wanted = choice.strategy
        if caller.streak < self.confirm or now - caller.since < caller.dwell:
            return
        if self.mode == "advise":
            if caller.advised != choice.strategy:
                caller.advised = choice.strategy
                caller.reason = f"advice: {choice.strategy}: {choice.reason}"
                self._log("strategy_advice", caller, choice, evidence)
            return
        self._switch(caller, choice, evidence, now)

    def _switch(self, caller: _Caller, choice: Choice, evidence: Evidence, now: float) -> None:
        old = caller.strategy
        came_back = now - caller.left_at.get(choice.strategy, float("-inf")) < 4 * caller.dwell
        caller.left_at[old] = now
        caller.strategy, caller.since = choice.strategy, now
        caller.switches += 1
        caller.reason, caller.wanted, caller.streak = choice.reason, None, 0
        if came_back:
            caller.dwell = max(2 * caller.dwell, self.window)
        self._log("strategy_switched", caller, choice, evidence, old=old)
        if not caller.in_flight[old]:
            self._close_left_behind(caller, old)

    def _log(
        self,
        event: str,
        caller: _Caller,
        choice: Choice,
        evidence: Evidence,
        *,
        old: str | None = None,
    ) -> None:
        figures: dict[str, Any] = {
            "calls": evidence.calls,
            "window": round(evidence.window_s, 1),
            "cpu_share": round(evidence.cpu_share, 3),
            "gil_stall_s": round(evidence.stall_gil_s, 3),
        }
        if evidence.gil_share is not None:
            figures["gil_share"] = round(evidence.gil_share, 3)
        moved = f"{old or evidence.strategy} -> {choice.strategy}"
        if event == "strategy_advice":
            moved += " (advice)"
        emit(
            log,
            logging.INFO,
            event,
            f"{caller.key}: {moved}: {choice.reason}",
            worker=caller.key,
            **_direction(old or evidence.strategy, choice.strategy),
            reason=choice.reason,
            evidence=figures,
            mode=self.mode,
        )

    @override
    async def close_clients(self, owners: Collection[str], timeout: float) -> None:
        await asyncio.gather(
            *(s.close_clients(owners, timeout) for s in list(self._strategies.values()))
        )

    @override
    async def aclose(self, timeout: float) -> None:
        self.closed = True
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        if self._closers:
            await asyncio.wait(list(self._closers), timeout=timeout)
        self._meter.close()
        owned, self._owned = self._owned, []
        await asyncio.gather(*(s.aclose(timeout) for s in owned))


def _name_of(fn: targets.Target) -> str:
    """A caller's name from its target: ``module.qualname``."""
    inner = targets.unwrap(fn)
    module = getattr(inner, "__module__", None) or "?"
    return f"{module}.{getattr(inner, '__qualname__', type(inner).__qualname__)}"


def _direction(source: str, target: str) -> dict[str, Any]:
    """The ``from`` and ``to`` fields of a decision (``from`` is a keyword)."""
    return {"from": source, "to": target}
