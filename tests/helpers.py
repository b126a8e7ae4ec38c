"""Helpers tests import: config builders, waiting on a daemon's counters, ports, tools."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from loopwatch.events import fields_of
from tests.daemon_process import ROOT, DaemonProcess, session_members
from tests.waiting import poll

IN_CI = os.environ.get("CI", "").lower() == "true"

WriteConfig = Callable[..., Path]
StartDaemon = Callable[..., DaemonProcess]


def worker_toml(
    name: str | None = "w",
    target: str | None = "loopwatch.daemon.workloads:countdown",
    strategy: str | None = "process",
    kwargs: str | dict[str, object] | None = None,
    **keys: object,
) -> str:
    """One ``[[workers]]`` table; a key given as None is left out.

    ``kwargs`` may be TOML inline-table text without braces (``"seconds = 0.1"``) or a dict.
    """
    fields: dict[str, object] = {"name": name, "target": target, "strategy": strategy}
    if isinstance(kwargs, str):
        fields["kwargs"] = _Raw(f"{{ {kwargs} }}")
    elif kwargs is not None:
        fields["kwargs"] = kwargs
    fields.update(keys)
    body = "\n".join(f"{k} = {toml_value(v)}" for k, v in fields.items() if v is not None)
    return f"[[workers]]\n{body}\n"


class _Raw(str):
    """TOML text to write as it is."""

    __slots__ = ()


def toml_value(value: object) -> str:
    """A Python value as TOML (strings, numbers, booleans, inline tables)."""
    if isinstance(value, _Raw):
        return str(value)
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return str(value).lower() if isinstance(value, bool) else str(value)


def tasks_done(daemon: DaemonProcess, worker: str, strategy: str, outcome: str = "ok") -> float:
    """``loopwatch_tasks_total`` of one worker, strategy and outcome now (0 when absent)."""
    value = daemon.value("loopwatch_tasks_total", worker=worker, strategy=strategy, outcome=outcome)
    return value or 0.0


def wait_tasks(
    daemon: DaemonProcess,
    worker: str,
    strategy: str,
    outcome: str = "ok",
    *,
    at_least: float = 1,
    timeout: float = 20.0,
) -> float:
    """Scrape until ``worker`` has finished ``at_least`` calls with ``outcome``; the count."""
    return daemon.wait_value(
        "loopwatch_tasks_total",
        lambda v: v >= at_least,
        timeout=timeout,
        worker=worker,
        strategy=strategy,
        outcome=outcome,
    )


def of_code(stall: dict[str, Any]) -> bool:
    """Whether a ``stall`` line is of the daemon's code, seen by the watchdog.

    On a busy host the first stall may be the host's (the loop waited for a CPU:
    ``starved``, in no one's code; CI's first minute, building wheels, made one), or one
    the watchdog itself had no CPU to look at (named by the call it overlapped, no stack).
    """
    return stall["cause"] != "starved" and bool(stall["stack"])


@contextlib.contextmanager
def hogs_on_one_cpu(count: int = 1) -> Iterator[int]:
    """``count`` CPU hogs pinned to one CPU, which it yields; killed on exit."""
    cpu = min(os.sched_getaffinity(0))
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        for hog in hogs:
            os.sched_setaffinity(hog.pid, {cpu})
        yield cpu
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def run_loopwatch(
    *args: str, timeout: float = 60.0, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``loopwatch ARGS`` (as ``python -m loopwatch.daemon``) run to its end, its output kept as text."""
    return subprocess.run(
        [sys.executable, "-m", "loopwatch.daemon", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env, check=False,
    )  # fmt: skip


# Ports handed out below the kernel's ephemeral range (32768-60999 by default): there,
# the source port of any outgoing connection (another test process's client) could take
# a port between our check and the server's bind. Each xdist worker has a range of its own.
PORTS_FROM, PORTS_PER_WORKER = 20_000, 2_000
_next_port = [0]


def free_port() -> int:
    """A TCP port nobody listens on right now, that no other test process hands out."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    base = PORTS_FROM + (int(worker) if worker.isdigit() else 0) % 6 * PORTS_PER_WORKER
    for _ in range(PORTS_PER_WORKER):
        port = base + (os.getpid() + _next_port[0]) % PORTS_PER_WORKER
        _next_port[0] += 1
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken (a server of an earlier test, still closing)
            return port
    raise AssertionError(f"no free port in {base}-{base + PORTS_PER_WORKER - 1}")


def require_tool(name: str) -> str:
    """The tool's path; skips without it, but fails under CI=true (CI must have it)."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is required under CI=true (make test installs it)")
        pytest.skip(f"{name} is not installed")
    return path


def registry_value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """One sample of an in-process registry (0 when absent)."""
    return registry.get_sample_value(name, labels) or 0.0


def no_process_left(daemon: DaemonProcess) -> None:
    """Nothing of the daemon's session lives on: killed children get a moment to be reaped."""
    poll(
        lambda: session_members(daemon.pid) == [],
        timeout=5,
        what=f"the session of {daemon.pid} to end ({session_members(daemon.pid)} left)",
    )


_FLOOR = """
import asyncio, sys, time
async def main():
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), done.set)
    print("sampling", flush=True)
    lags = []
    while not done.is_set():
        due = time.perf_counter() + 0.01
        await asyncio.sleep(0.01)
        lags.append(max(0.0, time.perf_counter() - due))
    lags.sort()
    print(lags[min(len(lags) - 1, int(len(lags) * 0.99))])
asyncio.run(main())
"""


def venv_with(path: Path, *installs: Sequence[str]) -> Path:
    """A fresh virtualenv at ``path``, each install run in turn; its python.

    The venv gets no pip of its own (``ensurepip`` is 4 s of a test): this Python's pip
    installs into it with ``--python``, as the venv's own would.
    """
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120
    )
    python = path / "bin" / "python"
    for install in installs:
        pip(python, "install", "-q", *install)
    return python


def pip(python: Path, *args: str) -> str:
    """Run pip on ``python``'s environment; its output."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check",
         *args],
        check=True, capture_output=True, text=True, timeout=600,
    ).stdout  # fmt: skip


class LagFloor:
    """This machine's own lag p99 over a test's run: a bare asyncio loop's 10 ms timer.

    It samples in its own process from ``start()`` until ``p99()``, beside the daemon,
    so a burst of other work (a second test process, CI's neighbours, two CPU hogs) late
    in the daemon's run lands in both. Timing assertions add it to their bound; on a
    quiet machine it is ~0.5 ms.
    """

    def __init__(self) -> None:
        self._probe: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self._probe = subprocess.Popen(
            [sys.executable, "-c", _FLOOR],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self._probe.stdout is not None
        assert self._probe.stdout.readline() == "sampling\n"

    def p99(self) -> float:
        """Stop sampling; the p99 of the lag seen since ``start()``."""
        assert self._probe is not None, "LagFloor.start() was not called"
        out, _ = self._probe.communicate(timeout=60)
        self._probe = None
        return float(out.strip())

    def close(self) -> None:
        if self._probe is not None:
            self._probe.kill()
            self._probe.communicate()
            self._probe = None


@contextlib.contextmanager
def library_logs() -> Iterator[list[dict[str, Any]]]:
    """Every event the library logs meanwhile (stdlib ``logging``), as dicts of its fields.

    Shaped as structlog's ``capture_logs`` gives the daemon's: ``event``, the fields,
    ``log_level``.
    """
    found: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            fields = fields_of(record)
            if fields is not None:
                found.append({**fields, "log_level": record.levelname.lower()})

    handler = Collect(logging.DEBUG)
    logger = logging.getLogger("loopwatch")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield found
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class JsonLines(logging.Formatter):
    """An application's JSON log format: one object per record, its ``extra`` fields in it."""

    def format(self, record: logging.LogRecord) -> str:
        fields = fields_of(record) or {"event": record.getMessage()}
        return json.dumps({**fields, "level": record.levelname.lower()}, default=str)


def log_json_lines() -> None:
    """An app's own logging set-up: JSON lines on stderr, the ``loopwatch`` logger at INFO."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    logging.getLogger().addHandler(handler)
    logging.getLogger("loopwatch").setLevel(logging.INFO)
