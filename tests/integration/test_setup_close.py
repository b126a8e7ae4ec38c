"""A worker's ``setup`` clients at stop and reload: every strategy, and a close() that never returns."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.helpers import StartDaemon, WriteConfig, tasks_done, wait_tasks, worker_toml
from tests.integration.test_setup import events, owners
from tests.waiting import poll

pytestmark = pytest.mark.integration


def stuck(tag: str, strategy: str, name: str = "stuck") -> str:
    return worker_toml(
        name, "tests.targets:use_client", strategy, interval=0.05,
        setup="tests.targets:stuck_client", setup_kwargs={"tag": tag},
    )  # fmt: skip


@pytest.mark.parametrize("strategy", ["thread", "blocking"])
def test_a_close_that_never_returns_holds_no_slot_no_loop_no_reload_and_no_stop(
    write_config: WriteConfig, start_daemon: StartDaemon, strategy: str
) -> None:
    """Three reloads each replace a worker whose client hangs in close(); all else goes on."""

    def config(tag: str) -> Path:
        return write_config(
            "[shutdown]\ntimeout = 2.0\n[executors.thread]\nmax_workers = 2\n"
            + stuck(tag, strategy)
            + worker_toml("other", "tests.targets:use_client", "thread", interval=0.01,
                          setup="tests.targets:http_session")
        )  # fmt: skip

    daemon = start_daemon(config("a"))
    daemon.wait_ready()
    wait_tasks(daemon, "stuck", strategy, at_least=3)
    for reload, tag in enumerate(("b", "c", "d"), start=1):
        config(tag)
        daemon.signal(signal.SIGHUP)
        poll(
            lambda n=reload: len(daemon.named("config_reloaded")) >= n,  # type: ignore[misc]
            timeout=20,
            what="a reload",
        )
        done = tasks_done(daemon, "other", "thread")
        wait_tasks(daemon, "other", "thread", at_least=done + 5)  # the unrelated worker runs on
        wait_tasks(daemon, "stuck", strategy, at_least=3)  # and so does the replacement
    stuck_lines = daemon.named("resource_close_stuck")
    assert len(stuck_lines) >= 3
    assert {line["worker"] for line in stuck_lines} == {"stuck"}
    assert all(line["client"] == "tests.targets.StuckClient" for line in stuck_lines)
    assert all(line["thread"] for line in stuck_lines)
    assert daemon.named("tick")  # the loop beats
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(2.0 + 10) == 0
    assert time.monotonic() - started < 2.0 + 5.0
    assert daemon.named("shutdown")


@pytest.mark.parametrize("threads_per_worker", [1, 2])
def test_dask_with_setup_stops_and_reloads_and_closes_in_the_owning_thread(
    tmp_path: Path, write_config: WriteConfig, start_daemon: StartDaemon, threads_per_worker: int
) -> None:
    db = tmp_path / "rows.db"

    def config(tag: str) -> Path:
        return write_config(
            f"[executors.dask]\nn_workers = 1\nthreads_per_worker = {threads_per_worker}\n"
            + worker_toml(
                "rows", "tests.targets:write_row", "dask", concurrency=2,
                setup="tests.targets:open_db", setup_kwargs={"path": str(db), "tag": tag},
            )
        )  # fmt: skip

    daemon = start_daemon(config("a"))
    daemon.wait_ready(timeout=60)
    wait_tasks(daemon, "rows", "dask", at_least=10)
    config("b")
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("config_reloaded", timeout=60)
    done = tasks_done(daemon, "rows", "dask")
    wait_tasks(daemon, "rows", "dask", at_least=done + 10)  # the replacement runs
    assert not daemon.named("config_reload_failed")
    assert tasks_done(daemon, "rows", "dask", "error") == 0
    assert daemon.stop(timeout=60) == 0
    assert daemon.named("shutdown")
    rows = events(db)
    closed = owners(rows, "closed", "a") + owners(rows, "closed", "b")
    opened = owners(rows, "opened", "a") + owners(rows, "opened", "b")
    assert set(closed) <= set(opened)  # never closed by another thread than its own
    assert "SQLite objects created in a thread" not in "\n".join(daemon.raw)
