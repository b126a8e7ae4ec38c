"""The distribution as users install it: a built wheel, in a fresh virtualenv, next to python-daemon."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import venv_with

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("order", ["python-daemon first", "loopwatch first"])
def test_installs_next_to_python_daemon_in_either_order(
    order: str, dist: dict[str, Path], tmp_path: Path
) -> None:
    ours, theirs = [f"loopwatch[daemon] @ {dist['wheel'].as_uri()}"], ["python-daemon"]
    installs = (theirs, ours) if order == "python-daemon first" else (ours, theirs)
    python = venv_with(tmp_path / "venv", *installs)
    # Run from an empty directory: the source tree's own daemon/ folder must not be seen.
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
        )

    check = run(str(python.parent / "loopwatch"), "check")
    assert check.returncode == 0, check.stderr
    assert '"workers"' in check.stdout
    theirs_ok = run(str(python), "-c", "import daemon; print(daemon.DaemonContext.__name__)")
    assert theirs_ok.returncode == 0, theirs_ok.stderr
    assert theirs_ok.stdout.strip() == "DaemonContext"
    module = run(str(python), "-m", "loopwatch.daemon", "check")
    assert module.returncode == 0, module.stderr
