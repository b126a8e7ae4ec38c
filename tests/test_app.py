"""App in-process: build_app, run, reload (applied, refused, unappliable) and shutdown."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog
from prometheus_client import CollectorRegistry

from loopwatch.daemon.app import App, build_app
from loopwatch.daemon.config import load_config
from loopwatch.daemon.systemd import Notifier
from loopwatch.strategies import ProcessStrategy
from tests.helpers import registry_value, worker_toml
from tests.waiting import wait_until

QUICK = worker_toml("w", "tests.targets:block", "thread", {"seconds": 0.01})


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "app.toml"
    path.write_text("[metrics]\nport = 0\n" + QUICK)
    return path


@pytest.fixture
async def app(config: Path, registry: CollectorRegistry) -> AsyncIterator[App]:
    """A running App on the test's loop; shut down at the end."""
    app = build_app(
        load_config(config, {}),
        config_path=config,
        registry=registry,
        notifier=Notifier({}),
        environ={},
    )
    await app.run()
    yield app
    await app.shutdown(asyncio.get_running_loop())


def done(registry: CollectorRegistry, worker: str = "w", strategy: str = "thread") -> float:
    return registry_value(
        registry, "loopwatch_tasks_total", worker=worker, strategy=strategy, outcome="ok"
    )


def reloads(registry: CollectorRegistry, outcome: str) -> float:
    return registry_value(registry, "loopwatch_config_reloads_total", outcome=outcome)


@pytest.fixture
def logs() -> Iterator[list[dict[str, object]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured  # type: ignore[misc]


async def test_run_counts_calls_and_shutdown_closes_everything(
    app: App, registry: CollectorRegistry
) -> None:
    """1. Workers run from the config; 2. shutdown drains them and closes their pools."""
    await wait_until(lambda: done(registry) >= 3)
    strategy = app.supervisor.workers["w"].strategy
    await app.shutdown(asyncio.get_running_loop())
    assert registry_value(registry, "loopwatch_tasks_in_flight", worker="w") == 0
    assert getattr(strategy, "closed", None) is True
    assert app.failure is None


async def test_reload_applies_the_difference_and_the_probe_settings(
    app: App, config: Path, registry: CollectorRegistry
) -> None:
    """A worker added, the probe's period changed: both live after one reload."""
    await wait_until(lambda: done(registry) >= 1)
    config.write_text(
        "[metrics]\nport = 0\n[probe]\nresolution = 0.02\nstall_threshold = 0.2\n"
        + QUICK
        + worker_toml("v", "tests.targets:block", "blocking", {"seconds": 0.001}, interval=0.05)
    )
    await app.reload()
    assert reloads(registry, "success") == 1
    assert set(app.supervisor.workers) == {"w", "v"}
    assert app.watcher.probe.resolution_s == 0.02
    await wait_until(lambda: done(registry, "v", "blocking") >= 2)


async def test_a_reload_that_cannot_be_applied_changes_nothing(
    app: App, config: Path, registry: CollectorRegistry, logs: list[dict[str, object]]
) -> None:
    """A failing executor factory beside a pool change: old strategies kept, none closed."""
    await wait_until(lambda: done(registry) >= 1)
    before = app.strategies
    thread = app.supervisor.workers["w"].strategy
    config.write_text(
        "[metrics]\nport = 0\n[probe]\nresolution = 0.05\nstall_threshold = 0.5\n"
        "[executors.thread]\nmax_workers = 9\n"
        + QUICK
        + worker_toml("x", "tests.targets:block", "executor", executor="tests.targets:fail")
    )
    await app.reload()
    assert reloads(registry, "failure") == 1
    assert app.strategies is before
    assert app.supervisor.workers["w"].strategy is thread
    assert getattr(thread, "closed", None) is False
    assert app.watcher.probe.resolution_s == 0.01  # the probe changes only on success
    failed = [e for e in logs if e["event"] == "config_reload_failed"]
    assert "tests.targets:fail" in str(failed[0]["error"])
    calls = done(registry)
    await wait_until(lambda: done(registry) >= calls + 3)  # the untouched worker still runs
    config.write_text("[metrics]\nport = 0\n" + QUICK)
    await app.reload()
    assert reloads(registry, "success") == 1


async def test_a_module_raising_at_import_is_refused_and_later_reloads_work(
    app: App, config: Path, registry: CollectorRegistry, tmp_path: Path
) -> None:
    """Any exception while importing a target is a refused reload, not a dead reloader."""
    (tmp_path / "raises_at_import.py").write_text("raise KeyError('at import')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        config.write_text(
            "[metrics]\nport = 0\n" + worker_toml("bad", "raises_at_import:fn", "thread")
        )
        await app.reload()
        assert reloads(registry, "failure") == 1
        assert set(app.supervisor.workers) == {"w"}
        config.write_text("[metrics]\nport = 0\n" + QUICK.replace('"w"', '"w2"'))
        await app.reload()
        assert set(app.supervisor.workers) == {"w2"}
    finally:
        sys.path.remove(str(tmp_path))


async def test_a_pool_no_worker_uses_any_more_is_closed_on_reload(
    app: App, config: Path, registry: CollectorRegistry
) -> None:
    """Removing the last worker of a strategy releases its pool (the Dask cluster too)."""
    config.write_text(
        '[metrics]\nport = 0\n[executors.process]\nstart_method = "fork"\n'
        + QUICK
        + worker_toml("p", "loopwatch.daemon.workloads:countdown", "process", {"n": 1000})
    )
    await app.reload()
    await wait_until(lambda: done(registry, "p", "process") >= 1)
    process = app.supervisor.workers["p"].strategy
    assert isinstance(process, ProcessStrategy)
    children = process.children(process.pool)
    thread = app.supervisor.workers["w"].strategy
    config.write_text('[metrics]\nport = 0\n[executors.process]\nstart_method = "fork"\n' + QUICK)
    await app.reload()
    assert getattr(process, "closed", None) is True
    # Closed means its children were told to go (and killed past the deadline); on a
    # loaded host the last one may take a moment to be reaped.
    await wait_until(lambda: not any(child.is_alive() for child in children), timeout=15)
    assert app.supervisor.workers["w"].strategy is thread
    assert getattr(thread, "closed", None) is False
