"""Worker (one configured target called over and over) and WorkerSupervisor (all of them)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import traceback
from collections.abc import Awaitable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import structlog

from loopwatch import resources, targets
from loopwatch.daemon.config import WorkerConfig
from loopwatch.daemon.metrics import Metrics
from loopwatch.daemon.strategy_set import StrategyKey, StrategySet
from loopwatch.errors import CallTimeoutError
from loopwatch.strategies import Call, Strategy
from loopwatch.throttle import LogThrottle

log = structlog.get_logger("loopwatch.workers")

BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 5.0
# Grace, past a call's own timeout, before a draining worker cancels it on reload.
RELOAD_DRAIN_GRACE_S = 1.0
# Each Worker built gets the next: a replaced worker's resources are told from its successor's.
GENERATIONS = itertools.count(1)
# How long a worker that stops waits for each pool thread to close its resources.
RESOURCE_SWEEP_S = 2.0


def strategy_key(cfg: WorkerConfig) -> StrategyKey:
    """Which shared strategy instance a worker uses."""
    return (cfg.strategy, cfg.executor)


def backoff_s(interval_s: float, failures: int, jitter: float = 1.0) -> float:
    """Pause before the next call: the interval, or longer while every call fails.

    ``jitter`` (0.5-1.0, random in the workers) keeps workers that failed together, such
    as every caller of a pool a crash just broke, from retrying in lockstep.
    """
    if failures == 0:
        return interval_s
    return max(interval_s, jitter * min(BACKOFF_FIRST_S * 2.0 ** (failures - 1), BACKOFF_MAX_S))


class Worker:
    """Runs ``concurrency`` slots, each calling the target through the strategy in a loop.

    Metrics are recorded here, in the daemon, never in pool children. Every iteration
    reaches an ``await`` (even with ``interval = 0`` on ``blocking``), so no worker can
    keep the loop to itself.
    """

    def __init__(
        self, cfg: WorkerConfig, strategy: Strategy, metrics: Metrics, failure_log: LogThrottle
    ) -> None:
        self.cfg = cfg
        self.strategy = strategy
        self._metrics = metrics
        self._failure_log = failure_log
        self._call = Call(_target(cfg), dict(cfg.kwargs), cfg.name)
        # Label children bound once: every microsecond on the per-call path shows.
        self._stats = metrics.workers.stats(cfg.name, strategy.runs_as(cfg.name))
        self._slots: list[asyncio.Task[None]] = []
        self._calling: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.started = 0
        self.finished = 0
        self.last_finished_at = 0.0  # perf_counter() of the latest call's end

    @property
    def name(self) -> str:
        """The worker's unique name."""
        return self.cfg.name

    def start(self) -> None:
        """Start the slots (from the loop)."""
        self._metrics.worker_info.labels(self.name).info(
            {"strategy": self.cfg.strategy, "target": self.cfg.target}
        )
        self._slots = [
            asyncio.create_task(self._slot(), name=f"worker:{self.name}:{i}")
            for i in range(self.cfg.concurrency)
        ]

    async def stop(self, timeout_s: float) -> None:
        """Start no new call; let in-flight calls finish for ``timeout_s``, then cancel them.

        Cancelled calls count as ``outcome="cancelled"``; slots that still do not end
        within a second after that are logged by name.
        """
        self._stopping = True
        for slot in self._slots:
            if slot not in self._calling:
                slot.cancel()
        if not self._slots:
            return
        _, pending = await asyncio.wait(self._slots, timeout=timeout_s)
        for slot in pending:
            slot.cancel()
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=1.0)
            if stuck:
                log.warning("worker_stop_stuck", worker=self.name, slots=len(stuck))
        if self.cfg.setup is not None:
            await self._close_resources()

    async def _close_resources(self) -> None:
        """Close the clients ``setup`` made, each by the thread that made it (sqlite3 insists)."""
        await self.strategy.close_clients([self.name], RESOURCE_SWEEP_S)

    def forget_metrics(self) -> None:
        """A worker that is gone: its info and in-flight series go (its counters stay)."""
        with contextlib.suppress(KeyError):
            self._metrics.worker_info.remove(self.name)
        self._metrics.workers.forget(self.name)

    async def _slot(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        on_loop = self.strategy.on_loop
        failures = 0
        while not self._stopping:
            self._calling.add(task)
            try:
                ok = await self._call_once()
            finally:
                self._calling.discard(task)
            if self._stopping:
                return
            failures = 0 if ok else failures + 1
            jitter = random.uniform(0.5, 1.0) if failures else 1.0  # noqa: S311 - not crypto
            pause = backoff_s(self.cfg.interval, failures, jitter)
            # A call in a pool always awaited its future: no extra loop turn is needed.
            # One on the loop may never have: then sleep(0) lets the loop run.
            if pause > 0 or on_loop:
                await asyncio.sleep(pause)

    async def _call_once(self) -> bool:
        self.started += 1
        stats = self._stats
        runs_as = self.strategy.runs_as(self.name)
        if runs_as != stats.strategy:
            # "auto" moved the worker: the call is counted under the strategy that runs it.
            stats = self._stats = self._metrics.workers.stats(self.name, runs_as)
        stats.in_flight += 1
        start = perf_counter()
        outcome = "error"
        still_running: Awaitable[Any] | None = None
        try:
            await self.strategy.call(self._call, self.cfg.timeout)
            outcome = "ok"
        except CallTimeoutError as exc:
            # Counted and logged now, when the timeout passes, even if the call never ends.
            outcome = "timeout"
            still_running = exc.still_running
            self._log_failure("TimeoutError", f"call exceeded timeout of {self.cfg.timeout} s")
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception as exc:
            self._log_failure(type(exc).__name__, str(exc), exc)
        finally:
            self.finished += 1
            self.last_finished_at = end = perf_counter()
            stats.finished(outcome, end - start)
            if still_running is None:
                stats.in_flight -= 1
        if still_running is not None:
            # A thread cannot be killed: the slot stays taken, and in flight, until it ends.
            try:
                with contextlib.suppress(Exception):
                    await still_running
            finally:
                stats.in_flight -= 1
        return outcome == "ok"

    def _log_failure(self, error_type: str, message: str, exc: Exception | None = None) -> None:
        fields: dict[str, object] = {
            "worker": self.name,
            "strategy": self.cfg.strategy,
            "error": f"{error_type}: {message}",
        }
        key = (self.name, error_type)
        if exc is not None and self._failure_log.is_new(key):
            # The first of a kind only: repeats are aggregated, and a pool child's
            # traceback comes along as the exception's cause.
            fields["traceback"] = "".join(traceback.format_exception(exc)).rstrip()
        self._failure_log.offer(key, fields)


def _target(cfg: WorkerConfig) -> targets.Target:
    """The target as a call runs it: with its resource first when the worker has a setup."""
    fn = targets.resolve(cfg.target)
    if cfg.setup is None:
        return fn
    resource = resources.Resource(
        cfg.name, cfg.setup, dict(cfg.setup_kwargs), generation=next(GENERATIONS)
    )
    return resources.WithResource(fn, resource)


@dataclass
class Changes:
    """What a reload did to the workers."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)


class WorkerSupervisor:
    """Owns the running workers: starts them, applies a new config's difference, stops them."""

    def __init__(self, metrics: Metrics, failure_log: LogThrottle) -> None:
        self._metrics = metrics
        self._failure_log = failure_log
        self.workers: dict[str, Worker] = {}

    async def _new_worker(self, cfg: WorkerConfig, strategies: StrategySet) -> Worker:
        strategy = await strategies.get(strategy_key(cfg))
        return Worker(cfg, strategy, self._metrics, self._failure_log)

    async def start(self, cfgs: tuple[WorkerConfig, ...], strategies: StrategySet) -> None:
        """Build every worker (so a broken strategy fails before any runs), then start them."""
        new = [await self._new_worker(cfg, strategies) for cfg in cfgs]
        for worker in new:
            self.workers[worker.name] = worker
            worker.start()

    async def apply(self, cfgs: tuple[WorkerConfig, ...], strategies: StrategySet) -> Changes:
        """Start added workers, drain and stop removed ones, replace changed ones.

        A changed worker (any setting, or its strategy's executor settings) is replaced
        only after its in-flight calls finish, so no call is lost or run twice.
        """
        wanted = {cfg.name: cfg for cfg in cfgs}
        changes = Changes()
        # Every strategy the new config needs is built first: if one cannot be, nothing
        # has been stopped yet.
        for needed in cfgs:
            await strategies.get(strategy_key(needed))
        drains = []
        for name, worker in list(self.workers.items()):
            cfg = wanted.get(name)
            if cfg is None:
                changes.removed.append(name)
                drains.append(self._retire(worker, None, strategies))
            elif cfg != worker.cfg or strategies.peek(strategy_key(cfg)) is not worker.strategy:
                changes.replaced.append(name)
                drains.append(self._retire(worker, cfg, strategies))
        for name, cfg in wanted.items():
            if name not in self.workers:
                changes.added.append(name)
                worker = await self._new_worker(cfg, strategies)
                self.workers[name] = worker
                worker.start()
        await asyncio.gather(*drains)
        return changes

    async def _retire(
        self, worker: Worker, successor: WorkerConfig | None, strategies: StrategySet
    ) -> None:
        await worker.stop(worker.cfg.timeout + RELOAD_DRAIN_GRACE_S)
        if successor is None:
            del self.workers[worker.name]
            worker.forget_metrics()
            return
        replacement = await self._new_worker(successor, strategies)
        self.workers[worker.name] = replacement
        replacement.start()

    async def stop(self, timeout_s: float) -> None:
        """Stop every worker at once, draining in-flight calls for at most ``timeout_s``."""
        await asyncio.gather(*(w.stop(timeout_s) for w in self.workers.values()))
