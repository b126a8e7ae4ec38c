"""The composition root: ``build_app(cfg)`` builds every runtime object; App runs them."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import signal
from collections.abc import Coroutine, Mapping
from pathlib import Path
from time import perf_counter
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from loopwatch.daemon import __version__
from loopwatch.daemon.config import DaemonConfig, load_config
from loopwatch.daemon.endpoint import MetricsEndpoint
from loopwatch.daemon.errors import ConfigError, LoopwatchError, StrategyError
from loopwatch.daemon.logs import configure_logging
from loopwatch.daemon.metrics import Metrics
from loopwatch.daemon.strategy_set import StrategySet
from loopwatch.daemon.systemd import Notifier
from loopwatch.daemon.ticker import Ticker
from loopwatch.daemon.workers import WorkerSupervisor, strategy_key
from loopwatch.throttle import LogThrottle
from loopwatch.watcher import Watcher

log = structlog.get_logger("loopwatch")

STATUS_INTERVAL_S = 5.0
FAILURE_LOG_WINDOW_S = 10.0
# Settings read once at start: a reload reports them instead of applying them.
# What a start-up failure's log line says to do when its error knows no better.
DEFAULT_FIX = "fix the cause above, check the config with `loopwatch check`, then restart"
RESOURCE_FIX = "raise the limit (ulimit -n, LimitNOFILE= or TasksMax= in the unit), then restart"
RESTART_ONLY = ("daemon", "metrics")


def build_app(
    cfg: DaemonConfig,
    *,
    config_path: Path | None = None,
    registry: CollectorRegistry | None = None,
    notifier: Notifier | None = None,
    environ: Mapping[str, str] | None = None,
) -> App:
    """Every runtime object of the daemon, built from a validated config; nothing runs yet."""
    registry = CollectorRegistry() if registry is None else registry
    metrics = Metrics(registry, loop_name=cfg.daemon.loop)
    watcher = Watcher(
        metrics=metrics.watch,
        resolution=cfg.probe.resolution,
        stall_threshold=cfg.probe.stall_threshold,
        dump_after=cfg.probe.dump_after,
        # A service must not go dark when native code holds the GIL on its loop.
        dump_reader=True,
    )
    failure_log = LogThrottle(_log_task_failed, FAILURE_LOG_WINDOW_S)
    return App(
        cfg,
        config_path=config_path,
        metrics=metrics,
        endpoint=MetricsEndpoint(cfg.metrics, registry, metrics.workers, watcher.recent_stalls)
        if cfg.metrics.port
        else None,
        notifier=Notifier() if notifier is None else notifier,
        environ=os.environ if environ is None else environ,
        watcher=watcher,
        ticker=Ticker(metrics.tick_drift, cfg.ticker.interval),
        strategies=StrategySet(cfg.executors, watcher.occupant, metrics.attach),
        supervisor=WorkerSupervisor(metrics, failure_log),
        failure_log=failure_log,
    )


class App:
    """Everything that runs: probe, watchdog, ticker, workers, systemd notifications, reload."""

    def __init__(
        self,
        cfg: DaemonConfig,
        *,
        config_path: Path | None,
        metrics: Metrics,
        endpoint: MetricsEndpoint | None,
        notifier: Notifier,
        environ: Mapping[str, str],
        watcher: Watcher,
        ticker: Ticker,
        strategies: StrategySet,
        supervisor: WorkerSupervisor,
        failure_log: LogThrottle,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.metrics = metrics
        self.endpoint = endpoint
        self.notifier = notifier
        self._environ = environ
        self.watcher = watcher
        self.ticker = ticker
        self.strategies = strategies
        self.supervisor = supervisor
        self.failure_log = failure_log
        # Read at scrape time: a reload replaces the set, so not its bound method.
        metrics.pools.source = lambda: self.strategies.items()  # noqa: PLW0108
        if endpoint is not None:
            endpoint.decisions = self.decisions
        # Why start-up failed; cli maps it to an exit code.
        self.failure: LoopwatchError | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._reload_wanted: asyncio.Event | None = None
        self._starting: asyncio.Task[None] | None = None
        self._shutting_down = False

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        """Start everything, then tell systemd READY=1; returns while the tasks run on."""
        loop = asyncio.get_running_loop()
        self._starting = asyncio.current_task()
        try:
            try:
                self.watcher.start(loop)
                self._spawn(self.ticker.run(), "ticker")
                await self.supervisor.start(self.cfg.workers, self.strategies)
            except OSError as exc:
                # Out of descriptors or processes (EMFILE, EAGAIN): no daemon half started.
                raise StrategyError(_resource_error(exc), fix=RESOURCE_FIX) from exc
        except LoopwatchError as exc:
            # A strategy could not start (a Dask scheduler down, a factory failing).
            log.error("startup_failed", error=str(exc), fix=exc.fix or DEFAULT_FIX)
            self.failure = exc
            loop.stop()
            return
        finally:
            self._starting = None
        if self._shutting_down:
            return  # SIGTERM came while we started: no READY after STOPPING
        self._reload_wanted = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, self._reload_wanted.set)
        self._spawn(self._reloader(self._reload_wanted), "reloader")
        if self.notifier.watchdog_interval_s is not None:
            self._spawn(self._ping_watchdog(self.notifier.watchdog_interval_s), "sd-watchdog")
        if self.notifier.enabled:
            self._spawn(self._report_status(), "sd-status")
        log.info(
            "startup",
            version=__version__,
            config=str(self.config_path) if self.config_path else "embedded default",
            metrics=self.endpoint.url if self.endpoint else None,
            workers=[w.name for w in self.cfg.workers],
            loop=type(loop).__module__.split(".")[0],
        )
        self.notifier.ready(self._status_text())

    async def shutdown(self, loop: asyncio.AbstractEventLoop) -> None:
        """Aiorun's shutdown_callback: drain workers, close pools, stop watching.

        Every wait has a deadline: in-flight calls get ``shutdown.timeout``, pools one
        second more to let children go, the endpoint its poll interval.
        """
        started = perf_counter()
        self._shutting_down = True
        self.notifier.stopping()
        # The SIGHUP handler stays: removed, a SIGHUP during the drain would kill us.
        for task in list(self._tasks):
            task.cancel()
        starting = self._starting
        if starting is not None:
            # SIGTERM during start-up (a pool warming up, Dask connecting): stop starting;
            # a strategy half started is closed by the set that was building it.
            starting.cancel()
            await asyncio.wait([starting], timeout=self.cfg.shutdown.timeout)
        in_flight = sum(w.started - w.finished for w in self.supervisor.workers.values())
        await self.supervisor.stop(self.cfg.shutdown.timeout)
        await self.strategies.aclose(1.0)
        self.watcher.stop()
        self.failure_log.flush(force=True)
        if self.endpoint is not None:
            await asyncio.to_thread(self.endpoint.stop)
        log.info(
            "shutdown",
            in_flight_at_signal=in_flight,
            elapsed=round(perf_counter() - started, 3),
            failed=self.failure is not None,
        )
        self.notifier.close()
        # From here on reloads are moot; the loop's close would give SIGHUP its default
        # action back (terminate) for the last moments of the process.
        loop.remove_signal_handler(signal.SIGHUP)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    async def _reloader(self, wanted: asyncio.Event) -> None:
        # SIGHUPs that arrive while a reload runs are coalesced into one more reload.
        while True:
            await wanted.wait()
            wanted.clear()
            if self._shutting_down:
                return
            await self.reload()

    async def reload(self) -> None:
        """Re-read the config file and apply the difference.

        A file that is invalid or cannot be applied changes nothing; any error is
        counted and logged, never raised, so later reloads still work.
        """
        self.notifier.reloading()
        try:
            await self._reload()
        except asyncio.CancelledError:
            raise
        except ConfigError as exc:
            self._reload_failed(exc.message, exc.details)
        except Exception as exc:
            self._reload_failed(str(exc).splitlines()[0] if str(exc) else repr(exc), [str(exc)])
        finally:
            self.notifier.ready(self._status_text())

    def _reload_failed(self, error: str, details: list[str]) -> None:
        self.metrics.config_reloads.labels(outcome="failure").inc()
        log.error("config_reload_failed", error=error, errors=details)

    async def _reload(self) -> None:
        new = load_config(self.config_path, self._environ)
        old = self.cfg
        restart_needed = [k for k in RESTART_ONLY if getattr(new, k) != getattr(old, k)]
        strategies = StrategySet(new.executors, self.watcher.occupant, self.metrics.attach)
        strategies.inherit(self.strategies)
        try:
            # Every strategy the new config needs, before anything is stopped.
            for worker in new.workers:
                await strategies.get(strategy_key(worker))
        except BaseException:
            await strategies.aclose(self.cfg.shutdown.timeout, keep=self.strategies)
            raise
        changes = await self.supervisor.apply(new.workers, strategies)
        # Workers on changed strategies were replaced by now: close what nobody uses, such
        # as the embedded Dask cluster once no worker is on "dask" any more.
        strategies.retain(strategies.closure({strategy_key(worker) for worker in new.workers}))
        retired, self.strategies = self.strategies, strategies
        await retired.aclose(self.cfg.shutdown.timeout, keep=strategies)
        self.watcher.reconfigure(new.probe.resolution, new.probe.stall_threshold)
        self.ticker.interval_s = new.ticker.interval
        if restart_needed:
            log.warning("config_restart_required", sections=restart_needed)
        self.cfg = new.model_copy(update={k: getattr(old, k) for k in restart_needed})
        self.metrics.config_reloads.labels(outcome="success").inc()
        log.info(
            "config_reloaded",
            added=changes.added,
            removed=changes.removed,
            replaced=changes.replaced,
            restart_required=restart_needed,
        )
        # Last, so that the reload is announced even when the new level would hide it.
        configure_logging(new.logging)

    async def _ping_watchdog(self, interval_s: float) -> None:
        # Sent from the loop on purpose: a stuck loop stops the pings and systemd restarts us.
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval_s)

    async def _report_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            self.notifier.status(self._status_text())

    def decisions(self) -> list[dict[str, Any]]:
        """What ``auto`` chose for each of its workers, and why (any thread)."""
        return [d for _, strategy in self.strategies.items() for d in strategy.decisions()]

    def _status_text(self) -> str:
        p99_ms = self.watcher.probe.recent_quantile(0.99) * 1000
        return f"loop lag p99 {p99_ms:.1f} ms, {len(self.supervisor.workers)} workers"


def _log_task_failed(fields: dict[str, Any]) -> None:
    log.warning("task_failed", **fields)


def _resource_error(exc: OSError) -> str:
    """``exc`` as a start-up failure, with the open files limit when it is the cause."""
    text = f"cannot start: {exc.strerror or exc}"
    if exc.errno == errno.EMFILE:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        text += f" (the open files limit, RLIMIT_NOFILE, is {soft})"
    return text
