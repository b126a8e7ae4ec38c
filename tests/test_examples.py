"""The documented examples run as they are written, each under its real server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.waiting import poll
from tests.web_server import WebServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SERVICE_DOC = ROOT / "docs/service.md"

SERVERS = {
    "fastapi_app.py": ["-m", "uvicorn", "examples.fastapi_app:app", "--port"],
    "aiohttp_app.py": [
        "-m",
        "aiohttp.web",
        "-H",
        "127.0.0.1",
        "examples.aiohttp_app:make_app",
        "-P",
    ],
}
METRICS_PATH = {"fastapi_app.py": "/metrics/", "aiohttp_app.py": "/metrics"}


def stall_lines(output: str) -> list[str]:
    """The example's own stall lines (on a loaded host, an import in the server can stall too)."""
    return [
        line
        for line in output.splitlines()
        if line.startswith("WARNING loopwatch: stall: ") and "examples/" in line
    ]


@pytest.mark.parametrize("name", ["plain_asyncio.py", "fastapi_app.py", "aiohttp_app.py"])
def test_each_example_is_short_and_printed_in_the_service_page(name: str) -> None:
    text = (EXAMPLES / name).read_text()
    assert text in SERVICE_DOC.read_text()
    assert len([line for line in text.splitlines() if line.strip()]) <= 16


def test_plain_asyncio_example_runs_and_is_the_one_in_the_readme() -> None:
    """One stall from the blocking call, named by its line; none from the offloaded one."""
    example = EXAMPLES / "plain_asyncio.py"
    assert example.read_text() in (ROOT / "README.md").read_text()
    result = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=60, check=True
    )
    assert "OFF THE LOOP" in result.stdout
    [stall] = stall_lines(result.stderr)  # logging's: the app's own format, on stderr
    assert "plain_asyncio.py:13 slow_lookup" in stall
    assert "(wait)" in stall


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(SERVERS))
def test_web_example_names_the_blocking_route_and_line(name: str) -> None:
    """Under its real server: one stall, by route template and handler line, and its metric."""
    server = WebServer(SERVERS[name], METRICS_PATH[name])
    try:
        server.get("/items/7")
        if name == "fastapi_app.py":
            server.get("/fixed/7")  # the fix in the same app: blocks nothing
        blocked = "loopwatch_event_loop_blocked_seconds_total"

        def counted() -> float:
            # Beside two CPU hogs this once read "starved": a stale run-queue figure held
            # the loop's queueing from before the stall (docs/reliability.md).
            return server.value(blocked, cause="wait", worker="")

        # Counted as the loop beats again: a moment later.
        poll(lambda: counted() >= 0.2, what=blocked)
    finally:
        server.stop()
    [stall] = stall_lines("\n".join(server.output()))
    line = 18 if name == "fastapi_app.py" else 15
    assert f"{name}:{line} read_item" in stall
    assert "request GET /items/{item_id}" in stall
    assert "(wait)" in stall or "(starved)" in stall
