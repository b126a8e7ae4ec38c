"""Worker and WorkerSupervisor on a real loop with real strategies."""

from __future__ import annotations

from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry

from loopwatch.daemon.config import ExecutorsConfig, WorkerConfig
from loopwatch.daemon.metrics import Metrics
from loopwatch.daemon.strategy_set import StrategySet
from loopwatch.daemon.workers import WorkerSupervisor, backoff_s, strategy_key
from loopwatch.occupant import Occupant
from loopwatch.throttle import LogThrottle
from tests.helpers import registry_value
from tests.waiting import wait_until


def test_backoff_grows_while_failing_and_resets() -> None:
    """No failures: the interval; failing: 50 ms doubling up to 5 s."""
    assert backoff_s(0.0, 0) == 0.0
    assert backoff_s(0.0, 1) == 0.05
    assert backoff_s(0.0, 3) == 0.2
    assert backoff_s(0.0, 30) == 5.0
    assert backoff_s(10.0, 2) == 10.0
    assert backoff_s(0.0, 3, jitter=0.5) == 0.1


async def test_supervisor_runs_counts_and_applies_changes(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    """Start, fail, replace, remove: metrics and info series follow."""
    logs: list[dict[str, Any]] = []
    supervisor = WorkerSupervisor(metrics, LogThrottle(logs.append, 10.0))
    strategies = StrategySet(ExecutorsConfig(), Occupant())
    ok = WorkerConfig(
        name="ok",
        target="loopwatch.daemon.workloads:blocking_io",
        kwargs={"seconds": 0.01},
        strategy="thread",
    )
    bad = WorkerConfig(name="bad", target="tests.targets:fail", strategy="blocking")
    await supervisor.start((ok, bad), strategies)
    await wait_until(
        lambda: (
            registry_value(
                registry, "loopwatch_tasks_total", worker="ok", strategy="thread", outcome="ok"
            )
            >= 3
        )
    )
    await wait_until(
        lambda: (
            registry_value(
                registry,
                "loopwatch_tasks_total",
                worker="bad",
                strategy="blocking",
                outcome="error",
            )
            >= 2
        )
    )
    first = dict(logs[0])
    assert first.pop("traceback").endswith("RuntimeError: boom")  # the first of a kind has it
    assert first == {"worker": "bad", "strategy": "blocking", "error": "RuntimeError: boom"}
    assert len(logs) == 1  # repeats are held back for the summary
    assert (
        registry_value(
            registry,
            "loopwatch_worker_info",
            worker="ok",
            strategy="thread",
            target="loopwatch.daemon.workloads:blocking_io",
        )
        == 1
    )

    coop = ok.model_copy(update={"strategy": "blocking"})
    changes = await supervisor.apply((coop,), strategies)
    assert (changes.added, changes.removed, changes.replaced) == ([], ["bad"], ["ok"])
    assert (
        registry_value(
            registry,
            "loopwatch_worker_info",
            worker="ok",
            strategy="blocking",
            target="loopwatch.daemon.workloads:blocking_io",
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "loopwatch_worker_info",
            {
                "worker": "ok",
                "strategy": "thread",
                "target": "loopwatch.daemon.workloads:blocking_io",
            },
        )
        is None
    )
    assert registry.get_sample_value("loopwatch_tasks_in_flight", {"worker": "bad"}) is None
    await wait_until(
        lambda: (
            registry_value(
                registry, "loopwatch_tasks_total", worker="ok", strategy="blocking", outcome="ok"
            )
            >= 2
        )
    )
    await supervisor.stop(1.0)
    await strategies.aclose(1.0)


async def test_stop_cancels_calls_past_the_deadline(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    """Calls still running at the drain deadline count as ``cancelled``."""
    supervisor = WorkerSupervisor(metrics, LogThrottle(lambda _: None, 10.0))
    strategies = StrategySet(ExecutorsConfig(), Occupant())
    slow = WorkerConfig(
        name="slow",
        target="tests.targets:spin_gen",
        kwargs={"seconds": 10.0},
        strategy="cooperative",
    )
    await supervisor.start((slow,), strategies)
    await wait_until(
        lambda: registry_value(registry, "loopwatch_tasks_in_flight", worker="slow") == 1
    )
    await supervisor.stop(0.1)
    assert (
        registry_value(
            registry,
            "loopwatch_tasks_total",
            worker="slow",
            strategy="cooperative",
            outcome="cancelled",
        )
        == 1
    )
    assert registry_value(registry, "loopwatch_tasks_in_flight", worker="slow") == 0
    await strategies.aclose(1.0)


async def test_strategy_set_keeps_unchanged_strategies_on_inherit() -> None:
    """Equal executor settings keep the same instance; changed ones get a new one."""
    occupant = Occupant()
    old = StrategySet(ExecutorsConfig(), occupant)
    w = WorkerConfig(name="w", target="loopwatch.daemon.workloads:blocking_io", strategy="thread")
    thread = await old.get(strategy_key(w))
    same = StrategySet(ExecutorsConfig(), occupant)
    same.inherit(old)
    assert same.peek(strategy_key(w)) is thread
    changed = StrategySet(ExecutorsConfig.model_validate({"thread": {"max_workers": 9}}), occupant)
    changed.inherit(same)
    assert changed.peek(strategy_key(w)) is None
    await same.aclose(1.0)
    await changed.aclose(1.0)


def test_logs_route_stdlib_through_structlog_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    """JSON lines off a TTY; stdlib loggers (aiorun, asyncio) use the same renderer and level."""
    import io
    import json
    import logging

    from loopwatch.daemon.config import LoggingConfig
    from loopwatch.daemon.logs import configure_logging

    stream = io.StringIO()
    configure_logging(LoggingConfig(level="warning"), stream)
    structlog.get_logger("t").info("hidden")
    structlog.get_logger("t").warning("shown", k=1)
    logging.getLogger("asyncio").warning("from %s", "stdlib")
    logging.getLogger("asyncio").info("hidden too")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["event"], e["level"]) for e in lines] == [
        ("shown", "warning"),
        ("from stdlib", "warning"),
    ]
    assert lines[0]["k"] == 1
    assert lines[1]["logger"] == "asyncio"
    configure_logging(LoggingConfig(format="console"), stream)
    structlog.get_logger("t").info("plain", k=2)
    assert "\x1b[" not in stream.getvalue().splitlines()[-1]
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()
