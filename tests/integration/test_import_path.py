"""``[daemon] import_path``: your own code, importable by the daemon and its pool children."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon_process import ROOT
from tests.helpers import (
    StartDaemon,
    WriteConfig,
    of_code,
    run_loopwatch,
    wait_tasks,
    worker_toml,
)

pytestmark = pytest.mark.integration

SHOP = """
def price(n: int) -> int:
    return sum(range(n))
"""


def write_shop(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "shop_code.py").write_text(SHOP)
    return src


@pytest.mark.parametrize(
    ("strategy", "start_method"),
    [("thread", "spawn"), ("process", "spawn"), ("process", "forkserver")],
)
def test_targets_import_from_import_path_in_the_daemon_and_its_children(
    tmp_path: Path,
    write_config: WriteConfig,
    start_daemon: StartDaemon,
    strategy: str,
    start_method: str,
) -> None:
    """A module outside the install resolves at load time and in spawn/forkserver children."""
    src = write_shop(tmp_path)
    config = write_config(
        f'[daemon]\nimport_path = ["{src}"]\n'
        f'[executors.process]\nstart_method = "{start_method}"\n'
        + worker_toml("shop", "shop_code:price", strategy, "n = 1000", interval=0.01)
    )
    daemon = start_daemon(config)
    daemon.wait_ready()
    wait_tasks(daemon, "shop", strategy, at_least=3)
    assert daemon.value(
        "loopwatch_tasks_total", worker="shop", strategy=strategy, outcome="error"
    ) in (None, 0.0)
    daemon.stop()


def test_relative_import_path_is_read_from_the_config_files_directory(
    tmp_path: Path, write_config: WriteConfig
) -> None:
    write_shop(tmp_path)
    config = write_config(
        '[daemon]\nimport_path = ["src"]\n'
        + worker_toml("shop", "shop_code:price", "thread", "n = 10")
    )
    result = run_loopwatch("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert str(tmp_path / "src") in result.stdout


def test_a_missing_import_path_is_a_config_error_naming_the_key(
    tmp_path: Path, write_config: WriteConfig
) -> None:
    config = write_config(
        f'[daemon]\nimport_path = ["{tmp_path}/nowhere"]\n'
        + worker_toml("shop", "shop_code:price", "thread")
    )
    result = run_loopwatch("check", "-c", str(config))
    assert result.returncode == 78
    assert f"daemon.import_path[0]: {tmp_path}/nowhere is not a directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_readme_walkthrough_names_the_line_and_the_cause(
    tmp_path: Path, write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """The README's module and config, as written: the stall names report.py:7, cause cpu."""
    readme = (ROOT / "README.md").read_text()
    walkthrough = readme.split("## Your own code in the daemon: a walkthrough", 1)[1].split(
        "\n## ", 1
    )[0]
    module = walkthrough.split("```python\n", 1)[1].split("```", 1)[0]
    toml = walkthrough.split("```toml\n", 1)[1].split("```", 1)[0]
    package = tmp_path / "src/shop"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "report.py").write_text(module)
    daemon = start_daemon(write_config(toml))
    daemon.wait_ready()
    stall = daemon.wait_event("stall", of_code)
    assert stall["culprit"] == f"{package}/report.py:7 checksum"
    assert stall["cause"] == "cpu"
    assert stall["worker"] == "report"
    daemon.stop()
