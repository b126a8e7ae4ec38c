"""The README's examples run as they are written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_plain_asyncio_example_runs_and_is_the_one_in_the_readme() -> None:
    """One stall from the blocking call, named by its line; none from the offloaded one."""
    example = ROOT / "examples/plain_asyncio.py"
    assert example.read_text() in (ROOT / "README.md").read_text()
    result = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=60, check=True
    )
    assert "OFF THE LOOP" in result.stdout
    stalls = [line for line in result.stdout.splitlines() if " stall " in line]
    assert len(stalls) == 1, result.stdout
    assert "culprit='" in stalls[0]
    assert "plain_asyncio.py:10 slow_lookup" in stalls[0]
    assert "cause=wait" in stalls[0]
