"""App: the composition root; builds runtime objects from a config and runs their lifecycle."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine, Mapping
from pathlib import Path
from time import perf_counter
from typing import Any

import structlog

from daemon import __version__
from daemon.config import DaemonConfig, load_config
from daemon.endpoint import MetricsEndpoint
from daemon.errors import ConfigError, LoopwatchError
from daemon.logs import configure_logging
from daemon.metrics import Metrics
from daemon.probe import LagProbe
from daemon.strategy_set import StrategySet
from daemon.systemd import Notifier
from daemon.throttle import LogThrottle
from daemon.ticker import Ticker
from daemon.watchdog import Occupant, StallWatchdog
from daemon.workers import WorkerSupervisor

log = structlog.get_logger("loopwatch")

EXIT_UNAVAILABLE = 69
EXIT_CONFIG = 78
STATUS_INTERVAL_S = 5.0
FAILURE_LOG_WINDOW_S = 10.0
# Settings read once at start: a reload reports them instead of applying them.
RESTART_ONLY = ("daemon", "metrics")


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
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.metrics = metrics
        self.endpoint = endpoint
        self.notifier = notifier
        self._environ = environ
        self.occupant = Occupant()
        self.probe = LagProbe(
            metrics.event_loop_lag, cfg.probe.resolution, cfg.probe.stall_threshold
        )
        self.watchdog = StallWatchdog(
            self.probe, metrics.event_loop_stall, metrics.event_loop_stalls, self.occupant
        )
        self.ticker = Ticker(metrics.tick_drift, cfg.ticker.interval)
        self.strategies = StrategySet(cfg.executors, self.occupant)
        self.failure_log = LogThrottle(_log_task_failed, FAILURE_LOG_WINDOW_S)
        self.supervisor = WorkerSupervisor(metrics, self.failure_log)
        self.exit_code = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._reload_wanted: asyncio.Event | None = None
        self._shutting_down = False

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        """Start everything, then tell systemd READY=1; returns while the tasks run on."""
        loop = asyncio.get_running_loop()
        self.probe.start(loop)
        self.watchdog.start()
        self._spawn(self.ticker.run(), "ticker")
        try:
            await self.supervisor.start(self.cfg.workers, self.strategies)
        except ConfigError as exc:
            log.error("startup_failed", error=str(exc))
            self.exit_code = EXIT_CONFIG
            loop.stop()
            return
        except LoopwatchError as exc:
            # A strategy could not start (a Dask scheduler down, a factory failing):
            # not a config error, so systemd may retry.
            log.error("startup_failed", error=str(exc))
            self.exit_code = EXIT_UNAVAILABLE
            loop.stop()
            return
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
        loop.remove_signal_handler(signal.SIGHUP)
        for task in list(self._tasks):
            task.cancel()
        in_flight = sum(w.started - w.finished for w in self.supervisor.workers.values())
        await self.supervisor.stop(self.cfg.shutdown.timeout)
        await self.strategies.aclose(1.0)
        self.watchdog.stop()
        self.probe.stop()
        self.failure_log.flush(force=True)
        if self.endpoint is not None:
            await asyncio.to_thread(self.endpoint.stop)
        log.info(
            "shutdown",
            in_flight_at_signal=in_flight,
            elapsed=round(perf_counter() - started, 3),
            exit_code=self.exit_code,
        )
        self.notifier.close()

    async def _reloader(self, wanted: asyncio.Event) -> None:
        # SIGHUPs that arrive while a reload runs are coalesced into one more reload.
        while True:
            await wanted.wait()
            wanted.clear()
            if self._shutting_down:
                return
            await self.reload()

    async def reload(self) -> None:
        """Re-read the config file and apply the difference; an invalid file changes nothing."""
        self.notifier.reloading()
        try:
            new = load_config(self.config_path, self._environ)
        except ConfigError as exc:
            self.metrics.config_reloads.labels(outcome="failure").inc()
            log.error("config_reload_failed", error=exc.message, errors=exc.details)
            self.notifier.ready(self._status_text())
            return
        old = self.cfg
        restart_needed = [k for k in RESTART_ONLY if getattr(new, k) != getattr(old, k)]
        if restart_needed:
            log.warning("config_restart_required", sections=restart_needed)
        self.probe.reconfigure(new.probe.resolution, new.probe.stall_threshold)
        self.ticker.interval_s = new.ticker.interval
        strategies = StrategySet(new.executors, self.occupant)
        strategies.inherit(self.strategies)
        retired, self.strategies = self.strategies, strategies
        try:
            changes = await self.supervisor.apply(new.workers, strategies)
        except LoopwatchError as exc:
            # The config validated but a strategy could not be built (a factory failed):
            # the workers that could start run; the rest is logged.
            self.metrics.config_reloads.labels(outcome="failure").inc()
            log.error("config_reload_failed", error=str(exc), errors=[str(exc)])
            self.notifier.ready(self._status_text())
            return
        finally:
            await retired.aclose(self.cfg.shutdown.timeout)
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
        self.notifier.ready(self._status_text())

    async def _ping_watchdog(self, interval_s: float) -> None:
        # Sent from the loop on purpose: a stuck loop stops the pings and systemd restarts us.
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval_s)

    async def _report_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            self.notifier.status(self._status_text())

    def _status_text(self) -> str:
        p99_ms = self.probe.recent_quantile(0.99) * 1000
        return f"loop lag p99 {p99_ms:.1f} ms, {len(self.supervisor.workers)} workers"


def _log_task_failed(fields: dict[str, Any]) -> None:
    log.warning("task_failed", **fields)
