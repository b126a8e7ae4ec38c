"""Zero code: ``opentelemetry-instrument`` with console exporters finds loopwatch's entry point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from tests.daemon_process import ROOT
from tests.helpers import free_port
from tests.waiting import poll

INSTRUMENT = str(Path(sys.executable).parent / "opentelemetry-instrument")
CONSOLE = [
    "--traces_exporter",
    "console",
    "--metrics_exporter",
    "console",
    "--logs_exporter",
    "none",
]


def environment() -> dict[str, str]:
    # The venv's python first: opentelemetry-instrument runs the command by PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "PYTHONPATH": str(ROOT), "OTEL_SERVICE_NAME": "demo"}


def exported(text: str) -> list[dict[str, Any]]:
    """The console exporters' objects: each a JSON document from a "{" line to a "}" line."""
    found, lines = [], []
    for line in text.splitlines():
        if line == "{":
            lines = [line]
        elif lines:
            lines.append(line)
            if line == "}":
                found.append(json.loads("\n".join(lines)))
                lines = []
    return found


def spans(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["name"]: o for o in objects if "context" in o and "kind" in o}


def metric_names(objects: list[dict[str, Any]]) -> set[str]:
    return {
        metric["name"]
        for o in objects
        for resource in o.get("resource_metrics", [])
        for scope in resource["scope_metrics"]
        if scope["scope"]["name"] == "loopwatch"
        for metric in scope["metrics"]
    }


def test_a_script_under_opentelemetry_instrument_gets_the_metrics_and_the_stall_span() -> None:
    done = subprocess.run(
        [INSTRUMENT, *CONSOLE, "python", "tests/otel_script.py"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=environment(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    objects = exported(done.stdout)
    assert metric_names(objects) == {
        "asyncio.eventloop.delay",
        "asyncio.eventloop.utilization",
        "asyncio.eventloop.time",
        "asyncio.eventloop.stall.duration",
    }
    found = spans(objects)
    stall, handle = found["asyncio.eventloop.stall"], found["handle /report"]
    assert stall["parent_id"] == handle["context"]["span_id"]
    assert stall["attributes"]["code.function.name"] == "render_report"
    assert stall["attributes"]["code.file.path"].endswith("tests/otel_script.py")
    assert stall["attributes"]["loopwatch.stall.cause"] == "wait"
    assert handle["start_time"] < stall["start_time"] < stall["end_time"] < handle["end_time"]


def test_fastapi_under_instrumented_uvicorn_on_uvloop_puts_the_stall_under_the_request() -> None:
    port = free_port()
    server = subprocess.Popen(
        [INSTRUMENT, *CONSOLE, "uvicorn", "tests.otel_app:app", "--loop", "uvloop",
         "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=environment(),
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if server.poll() is not None:
                raise AssertionError(f"uvicorn exited ({server.returncode})")
            with urllib.request.urlopen(f"{base}/health", timeout=5) as answer:
                return bool(answer.status == 200)

        poll(up, timeout=30, interval=0.1, what="uvicorn", retry_on=(OSError,))
        with urllib.request.urlopen(f"{base}/report", timeout=10) as answer:
            assert json.loads(answer.read()) == {"report": "done"}
        # The stall is reported at its end, a beat after the answer: let the loop beat.
        with urllib.request.urlopen(f"{base}/health", timeout=5):
            pass
    finally:
        server.send_signal(signal.SIGINT)  # uvicorn's graceful stop: the exporters flush
        out, err = server.communicate(timeout=30)
    found = spans(exported(out))
    assert "asyncio.eventloop.stall" in found, err[-3000:]
    stall = found["asyncio.eventloop.stall"]
    [request] = [
        s for s in found.values() if s["kind"] == "SpanKind.SERVER" and "/report" in s["name"]
    ]
    assert stall["context"]["trace_id"] == request["context"]["trace_id"]
    assert stall["parent_id"] == request["context"]["span_id"]
    assert stall["attributes"]["code.function.name"] == "report"
    assert stall["attributes"]["code.file.path"].endswith("tests/otel_app.py")
