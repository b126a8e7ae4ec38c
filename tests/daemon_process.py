"""DaemonProcess: a real ``loopwatch run`` subprocess, its JSON logs, and its endpoint."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from loopwatch.daemon.top import Samples, parse_samples, quantile
from tests.waiting import poll

ROOT = Path(__file__).resolve().parent.parent
Event = dict[str, Any]


class DaemonProcess:
    """Starts ``python -m loopwatch.daemon run -c CONFIG``; reads its stderr as JSON lines."""

    def __init__(
        self, config: Path, port: int, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.config = config
        self.port = port
        full_env = dict(os.environ)
        full_env.pop("NOTIFY_SOCKET", None)
        full_env.pop("WATCHDOG_USEC", None)
        full_env["PYTHONPATH"] = str(ROOT)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loopwatch.daemon", "run", "-c", str(config), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=ROOT,
            start_new_session=True,
        )
        self.events: list[Event] = []
        self.raw: list[str] = []
        self._new: queue.Queue[Event] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        """The daemon's pid."""
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            text = line.decode(errors="replace").rstrip("\n")
            self.raw.append(text)
            try:
                event = json.loads(text)
            except json.JSONDecodeError:
                event = {"event": "<not json>", "text": text}
            if not isinstance(event, dict):
                event = {"event": "<not json>", "text": text}
            self.events.append(event)
            self._new.put(event)

    def wait_event(
        self, name: str, where: Callable[[Event], bool] = lambda _: True, timeout: float = 20.0
    ) -> Event:
        """The first logged event called ``name`` that satisfies ``where`` (past or future)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                seen += 1
                if event.get("event") == name and where(event):
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tail = "\n".join(self.raw[-30:])
                raise AssertionError(f"no {name!r} event within {timeout} s; log tail:\n{tail}")
            if self.proc.poll() is not None and self._new.empty() and not self._reader.is_alive():
                tail = "\n".join(self.raw[-30:])
                raise AssertionError(
                    f"daemon exited ({self.proc.returncode}) before {name!r}:\n{tail}"
                )
            try:
                self._new.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                pass

    def named(self, name: str) -> list[Event]:
        """Every event called ``name`` so far."""
        return [e for e in self.events if e.get("event") == name]

    def wait_ready(self, timeout: float = 30.0) -> Event:
        """Wait for the ``startup`` event (the endpoint is bound by then)."""
        return self.wait_event("startup", timeout=timeout)

    def scrape_text(self, timeout: float = 5.0) -> str:
        """The endpoint's exposition text."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return str(response.read().decode())

    def scrape(self) -> Samples:
        """Samples keyed by (name, sorted labels)."""
        return parse_samples(self.scrape_text())

    def value(self, name: str, **labels: str) -> float | None:
        """One sample's value, None when absent."""
        return self.scrape().get((name, tuple(sorted(labels.items()))))

    def wait_value(
        self, name: str, cond: Callable[[float], bool], timeout: float = 20.0, **labels: str
    ) -> float:
        """Scrape until sample ``name{labels}`` satisfies ``cond``."""

        def satisfied() -> list[float]:
            value = self.value(name, **labels)
            return [value] if value is not None and cond(value) else []

        return poll(satisfied, timeout=timeout, what=f"{name}{labels} satisfying the condition")[0]

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the daemon."""
        os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait for the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def wait_exit(self, timeout: float = 20.0) -> int:
        """Wait for the process to exit; returns its code."""
        code = self.proc.wait(timeout)
        self._close()
        return code

    def _close(self) -> None:
        self._reader.join(5)
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()

    def kill(self) -> None:
        """SIGKILL the whole process group (cleanup after a failed test)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self._close()


def histogram_quantile(samples: Samples, name: str, q: float) -> float:
    """Quantile ``q`` of histogram ``name`` (no labels), as ``loopwatch top`` computes it."""
    buckets = [
        (float(dict(labels)["le"]), value)
        for (sample, labels), value in samples.items()
        if sample == f"{name}_bucket"
    ]
    found = quantile(buckets, q)
    assert found is not None, f"{name} has no observations"
    return found


def _processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, the fields of /proc/PID/stat after the command name) of every process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        yield int(entry.name), stat.rsplit(")", 1)[1].split()


def children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid``."""
    return [child for child, fields in _processes() if int(fields[1]) == pid]


def children_running(pid: int, marker: bytes) -> list[int]:
    """Children of ``pid`` whose command line contains ``marker``."""
    found = []
    for child in children_of(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue  # gone already
        if marker in command:
            found.append(child)
    return found


def session_members(sid: int) -> list[int]:
    """Live pids in session ``sid`` (the daemon starts its own session): leftovers show here."""
    return [member for member, fields in _processes() if int(fields[3]) == sid and fields[0] != "Z"]
