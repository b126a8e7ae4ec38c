"""The distribution as users get it: the plain install, and the sdist and the wheel with the daemon."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import pip, venv_with

# A script as a service would write it: the application's own logging set-up, one block.
WATCHED = """
import asyncio, logging, time
import loopwatch

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")


def render_report():
    time.sleep(0.3)


async def main():
    async with loopwatch.watch(dump_after=0) as watcher:
        await asyncio.sleep(0.05)
        render_report()
        await asyncio.sleep(0.2)
        assert await loopwatch.run_sync(sum, [1, 2]) == 3
    print("stalls", watcher.stalls)

asyncio.run(main())
"""


def run(*argv: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def distributions(python: Path) -> set[str]:
    listed = pip(python, "list", "--format", "json")
    names = {d["name"].lower().replace("_", "-") for d in json.loads(listed)}
    return names - {"pip", "setuptools", "wheel"}


def test_the_plain_install_is_the_library_with_prometheus_client_only(
    dist: dict[str, Path], tmp_path: Path
) -> None:
    python = venv_with(tmp_path / "venv", [str(dist["wheel"])])
    cwd = tmp_path / "cwd"  # not the source tree: its loopwatch/ must not be seen
    cwd.mkdir()
    assert distributions(python) == {"loopwatch", "prometheus-client"}
    # A watched script: its stall line comes in the application's own log format.
    (cwd / "app.py").write_text(WATCHED)
    done = run(python, "app.py", cwd=cwd)
    assert done.returncode == 0, done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.startswith("WARNING loopwatch stall: ")]
    assert "(wait) at " in line
    assert "app.py:9 render_report" in line
    assert "stalls 1" in done.stdout
    # The daemon says what it needs, in one line, as a service that cannot start.
    for command in (["run"], ["check"]):
        said = run(python.parent / "loopwatch", *command, cwd=cwd)
        assert said.returncode == 69
        assert said.stderr.count("\n") == 1, said.stderr
        assert 'pip install "loopwatch[daemon]"' in said.stderr
        assert "Traceback" not in said.stderr


@pytest.mark.parametrize("kind", ["sdist", "wheel"])
def test_the_sdist_and_the_wheel_install_the_daemon_with_its_extra(
    kind: str, dist: dict[str, Path], tmp_path: Path
) -> None:
    python = venv_with(tmp_path / "venv", [f"loopwatch[daemon] @ {dist[kind].as_uri()}"])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    check = run(python.parent / "loopwatch", "check", cwd=cwd)
    assert check.returncode == 0, check.stderr
    assert '"workers"' in check.stdout
    (cwd / "app.py").write_text(WATCHED)
    done = run(python, "app.py", cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert "stalls 1" in done.stdout
