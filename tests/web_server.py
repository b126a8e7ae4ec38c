"""WebServer: a web app under its real server (uvicorn, aiohttp.web) as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Sequence

from loopwatch.daemon.top import parse_samples
from tests.daemon_process import ROOT
from tests.helpers import free_port
from tests.waiting import poll


class WebServer:
    """Starts ``python ARGS PORT``; ready once ``metrics_path`` answers."""

    def __init__(self, args: Sequence[str], metrics_path: str = "/metrics") -> None:
        self.port = free_port()
        self.metrics_path = metrics_path
        self.proc = subprocess.Popen(
            [sys.executable, *args, str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.lines: list[str] = []

        def serving() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode})")
            return bool(self.get(metrics_path) is not None)

        poll(serving, timeout=30, interval=0.1, what="the server", retry_on=(OSError,))

    def get(self, path: str) -> str:
        """The body of ``GET path``."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return str(r.read().decode())

    def value(self, name: str, **labels: str) -> float:
        """One sample of the metrics (0 when absent)."""
        samples = parse_samples(self.get(self.metrics_path))
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def samples(self, name: str) -> dict[tuple[str, str], float]:
        """One scrape: the samples of ``name`` keyed by their single label."""
        return {
            labels[0]: value
            for (sample, labels), value in parse_samples(self.get(self.metrics_path)).items()
            if sample == name and len(labels) == 1
        }

    def output(self) -> list[str]:
        """Every line the server printed so far (stdout and stderr)."""
        assert self.proc.stdout is not None
        if not self.proc.stdout.closed:
            self.lines.extend(line for line in iter(self.proc.stdout.readline, "") if line)
        return self.lines

    def stop(self) -> None:
        """Terminate it; what it printed until then stays in ``output()``."""
        self.proc.terminate()
        self.proc.wait(20)
        self.output()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
