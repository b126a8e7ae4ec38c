"""cli in-process: exit codes for every outcome, and no traceback for bad input."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from loopwatch.daemon.cli import EXIT_CONFIG, EXIT_OK, EXIT_UNAVAILABLE, run_cli
from tests.helpers import free_port, worker_toml


@pytest.fixture(autouse=True)
def signal_handlers() -> Iterator[None]:
    """aiorun takes SIGINT/SIGTERM over and run configures logging: undo both after."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cli.toml"
    path.write_text('[logging]\nformat = "json"\n' + text)
    return path


def test_check_prints_the_effective_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A valid file: exit 0 and the config with every default filled in."""
    assert run_cli(["check", "-c", str(write(tmp_path, "[probe]\ndump_after = 0\n"))]) == EXIT_OK
    assert '"dump_after": 0.0' in capsys.readouterr().out


@pytest.mark.parametrize(
    "case",
    [
        (".relative:fn", None, "is a relative import path"),
        ("broken_syntax:fn", "def fn(:\n", "SyntaxError"),
        ("raises_value:fn", "raise ValueError('no config here')\n", "ValueError: no config here"),
    ],
)
def test_any_import_failure_is_a_config_error_without_traceback(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[str, str | None, str],
) -> None:
    """Relative paths, syntax errors, any exception at import: exit 78 naming the key."""
    target, module_text, expected = case
    if module_text is not None:
        (tmp_path / f"{target.split(':', maxsplit=1)[0]}.py").write_text(module_text)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write(tmp_path, worker_toml("w", target, "thread"))
    assert run_cli(["check", "-c", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "workers[0].target" in err
    assert expected in err
    assert "Traceback" not in err


def test_check_shows_every_class_of_error_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A schema error and a target that does not resolve, in one run: both are named."""
    path = write(
        tmp_path,
        "[probe]\nresolution = -1\n"
        + worker_toml("bad", "loopwatch.daemon.workloads:countdown", "thread", interval=-1)
        + worker_toml("gone", "no_such_module_here:fn", "thread")
        + worker_toml("fine", "loopwatch.daemon.workloads:countdown", "thread"),
    )
    saved = list(sys.path)
    assert run_cli(["check", "-c", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "probe.resolution" in err
    assert "workers[0].interval" in err
    assert "workers[1].target" in err
    assert "no_such_module_here" in err
    assert "workers[2]" not in err
    assert sys.path == saved


def test_run_exits_69_when_a_strategy_cannot_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An executor factory that fails at start-up: startup_failed, with a fix, and 69."""
    path = write(
        tmp_path,
        "[metrics]\nport = 0\n"
        + worker_toml("x", "tests.targets:block", "executor", executor="tests.targets:fail"),
    )
    assert run_cli(["run", "-c", str(path)]) == EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert '"event": "startup_failed"' in err
    assert '"fix":' in err


def test_run_exits_69_when_the_port_is_taken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The metrics port in use: 69, before any worker starts."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run_cli(["run", "-c", str(write(tmp_path, f"[metrics]\nport = {port}\n"))]) == 69
    assert "startup_failed" in capsys.readouterr().err


def test_run_stops_cleanly_on_sigterm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGTERM while running: drained, exit 0."""
    path = write(
        tmp_path,
        f"[metrics]\nport = {free_port()}\n"
        + worker_toml("w", "tests.targets:block", "thread", {"seconds": 0.01}),
    )
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        assert run_cli(["run", "-c", str(path)]) == EXIT_OK
    finally:
        timer.cancel()
    err = capsys.readouterr().err
    assert '"event": "startup"' in err
    assert '"event": "shutdown"' in err
