"""``loopwatch top``: a live view of a running daemon, read from its metrics endpoint.

Every ``interval`` it scrapes ``/metrics`` (and ``/stalls``, the last finished stalls with
their culprits, which only the daemon's endpoint serves) and shows what changed since the
previous scrape: the loop's lag quantiles and a sparkline of them, utilization, the stall
in progress, the last stalls, each worker's rates and latencies, and how full each pool
is. It reads nothing else, so it works against any process that exports loopwatch's
metrics, a service embedding the library included.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import ssl
import sys
import termios
import time
import tty
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from loopwatch.daemon.config import MetricsConfig
from loopwatch.errors import LoopwatchError
from loopwatch.frames import printable

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]

LAG = "loopwatch_event_loop_lag_seconds"
SPARK = "▁▂▃▄▅▆▇█"
# Sparkline levels on a fixed scale (seconds): a glance tells 1 ms from 100 ms.
SPARK_LEVELS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
HISTORY = 60
SHOWN_STALLS = 5
# An "auto" reason is a sentence of figures: longer than a culprit, still bounded.
REASON_CHARS = 400
# What is read of an endpoint is untrusted text: bounded in size, time and characters.
METRICS_LIMIT = 32 * 1024 * 1024  # bytes: 300 workers' exposition is ~2 MB
STALLS_LIMIT = 16 * 1024 * 1024  # 20 stalls: a pathological 5 MB culprit still fits
READ_DEADLINE_S = 5.0  # for a whole answer, however slowly it trickles
FIELD_CHARS = 300
# Columns when the output is not a terminal: wide enough that no field is ever cut.
PIPED_WIDTH = 1000
# A time or a duration beyond this is nonsense (seconds: ~3000 years).
_MAX_SECONDS = 1e11


class ScrapeError(LoopwatchError):
    """The endpoint did not answer with metrics."""


def clean(value: object, limit: int = FIELD_CHARS) -> str:
    """Untrusted text as it may reach a terminal: no control characters, at most ``limit``."""
    text = value if isinstance(value, str) else "" if value is None else str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return printable(text)


def number(value: object) -> float | None:
    """A finite, sane number of seconds from untrusted JSON; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and abs(number) < _MAX_SECONDS else None


@dataclass(frozen=True)
class Scrape:
    """One reading of the endpoint."""

    at: float
    samples: Samples
    # None when the endpoint has no /stalls (a service's): culprits are in its log only.
    stalls: list[dict[str, Any]] | None = None
    # Each "auto" worker's strategy now and why (the daemon's /auto), by worker name.
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float | None:
        """The sample ``name{labels}``, None when absent."""
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def series(self, name: str) -> Iterator[tuple[dict[str, str], float]]:
        """Every sample of ``name``, with its labels."""
        for (sample, labels), value in self.samples.items():
            if sample == name:
                yield dict(labels), value


def parse_samples(text: str) -> Samples:
    """Every sample of an exposition, keyed by name and sorted labels; ValueError if not one."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def url_from_config(cfg: MetricsConfig) -> str:
    """Where a daemon run with ``cfg`` serves its metrics, as seen from this host."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(cfg.host, cfg.host)  # noqa: S104
    host = f"[{host}]" if ":" in host else host
    scheme = "https" if cfg.tls_cert else "http"
    return f"{scheme}://{host}:{cfg.port}/metrics"


class Reader:
    """Scrapes one endpoint; a TLS endpoint is trusted by the certificate it is given."""

    def __init__(
        self,
        url: str,
        cafile: str | None = None,
        timeout_s: float = 3.0,
        deadline_s: float = READ_DEADLINE_S,
    ) -> None:
        self.url = url
        self._stalls_url = url.rsplit("/", 1)[0] + "/stalls"
        self._auto_url = url.rsplit("/", 1)[0] + "/auto"
        self._timeout_s = timeout_s
        self._deadline_s = deadline_s
        self._ssl: ssl.SSLContext | None = None
        if url.startswith("https:"):
            self._ssl = ssl.create_default_context(cafile=cafile)
            self._ssl.check_hostname = False  # the daemon's certificate, read from its config

    def scrape(self) -> Scrape:
        """Read the endpoint now; raises ScrapeError saying why."""
        try:
            text = self._get(self.url, METRICS_LIMIT)
        except (OSError, ValueError) as exc:
            raise ScrapeError(_reason(exc)) from None
        try:
            samples = parse_samples(text)
        except ValueError as exc:
            raise ScrapeError(f"not a metrics endpoint ({exc})") from None
        if (LAG + "_count", ()) not in samples:
            raise ScrapeError("no loopwatch metrics there (is it a loopwatch endpoint?)")
        return Scrape(time.monotonic(), samples, self._recent_stalls(), self._decisions())

    def _recent_stalls(self) -> list[dict[str, Any]] | None:
        # None: not the daemon's endpoint, a service's /metrics has no /stalls.
        return self._records(self._stalls_url, "stalls")

    def _decisions(self) -> dict[str, dict[str, Any]]:
        found = self._records(self._auto_url, "workers") or []
        return {str(d["worker"]): d for d in found if "worker" in d}

    def _records(self, url: str, key: str) -> list[dict[str, Any]] | None:
        """The objects in the list ``key`` of the JSON document at ``url``; None without one."""
        with contextlib.suppress(OSError, ValueError, AttributeError, RecursionError):
            found = json.loads(self._get(url, STALLS_LIMIT)).get(key)
            if isinstance(found, list):
                return [item for item in found if isinstance(item, dict)]
        return None

    def _get(self, url: str, limit: int) -> str:
        """The body at ``url``: ValueError past ``limit`` bytes, TimeoutError past the deadline."""
        deadline = time.monotonic() + self._deadline_s
        chunks: list[bytes] = []
        size = 0
        with urllib.request.urlopen(url, timeout=self._timeout_s, context=self._ssl) as response:  # noqa: S310 - http(s) only, from the config or the user
            # read1: what has come, not a blocking wait for all of it, so a body that
            # trickles in a byte at a time still meets the deadline.
            while chunk := response.read1(65536):
                size += len(chunk)
                if size > limit:
                    raise ValueError(f"answer larger than {limit // 1024 // 1024} MB")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no whole answer within {self._deadline_s:.0f} s")
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def quantile(buckets: Iterable[tuple[float, float]], q: float) -> float | None:
    """``histogram_quantile`` of cumulative ``(le, count)`` buckets; None when empty."""
    ranked = sorted(buckets)
    if not ranked or ranked[-1][1] <= 0:
        return None
    rank = q * ranked[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in ranked:
        if count >= rank:
            if math.isinf(le):
                return lower_le  # the highest finite bound, as Prometheus does
            span = count - lower_count
            return lower_le + (le - lower_le) * ((rank - lower_count) / span if span else 1.0)
        lower_le, lower_count = le, count
    return lower_le


def delta_quantile(prev: Scrape, cur: Scrape, name: str, q: float, **labels: str) -> float | None:
    """The ``q`` quantile of the observations of histogram ``name`` between two scrapes."""
    buckets = []
    for found, value in cur.series(name + "_bucket"):
        le = found.pop("le")
        if found != labels:
            continue
        before = prev.value(name + "_bucket", le=le, **labels) or 0.0
        buckets.append((float(le), value - before))
    estimate = quantile(buckets, q)
    within = _one_bucket(buckets)
    if estimate is None or within is None:
        return estimate
    # Every observation of the interval fell in one bucket: their mean (from _sum and
    # _count) says more than interpolating to the bucket's top (0.3 s calls in the
    # (0.25, 0.5] bucket read "p99 497.5 ms").
    count = _delta(prev, cur, name + "_count", labels)
    total = _delta(prev, cur, name + "_sum", labels)
    if not count or total is None:
        return estimate
    low, high = within
    return min(max(total / count, low), high)


def _one_bucket(buckets: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(lower, upper bound) of the one finite bucket holding every observation, if so."""
    ranked = sorted(buckets)
    if not ranked or ranked[-1][1] <= 0:
        return None
    total, lower = ranked[-1][1], 0.0
    for le, count in ranked:
        if count > 0:
            return (lower, le) if count == total and not math.isinf(le) else None
        lower = le
    return None


def _delta(prev: Scrape, cur: Scrape, name: str, labels: dict[str, str]) -> float | None:
    now, before = cur.value(name, **labels), prev.value(name, **labels)
    return None if now is None else now - (before or 0.0)


def rate(prev: Scrape, cur: Scrape, name: str, **labels: str) -> float | None:
    """Per-second increase of counter ``name`` between two scrapes."""
    now, before = cur.value(name, **labels), prev.value(name, **labels)
    if now is None or before is None or cur.at <= prev.at:
        return None
    return max(0.0, now - before) / (cur.at - prev.at)


def sparkline(values: Iterable[float]) -> str:
    """One character per value, on the fixed scale of ``SPARK_LEVELS``."""
    return "".join(SPARK[sum(v >= level for level in SPARK_LEVELS)] for v in values)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


@dataclass
class View:
    """What ``top`` shows, built from successive scrapes."""

    url: str
    lag_p99: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    prev: Scrape | None = None
    cur: Scrape | None = None
    problem: str | None = None

    def add(self, scrape: Scrape) -> None:
        """Take a new scrape; the interval since the previous one is what is shown."""
        self.prev, self.cur, self.problem = self.cur, scrape, None
        if self.prev is not None and _restarted(self.prev, scrape):
            self.prev = None  # counters started again from zero: no interval to show yet
        if self.prev is not None:
            p99 = delta_quantile(self.prev, scrape, LAG, 0.99)
            if p99 is not None:
                self.lag_p99.append(p99)

    def render(self) -> RenderableType:
        """The whole screen."""
        title = Text.assemble(("loopwatch top", "bold"), f"  {self.url}")
        if self.problem is not None:
            title.append(f"  unreachable: {self.problem} (retrying)", style="bold red")
        if self.cur is None or self.prev is None:
            return Group(title, Text("waiting for two scrapes..."))
        prev, cur = self.prev, self.cur
        parts = [self._loop(prev, cur), _stalls(cur), _workers(prev, cur), _pools(cur)]
        if cur.decisions:
            parts.append(_decisions(cur))
        return Group(title, *parts)

    def _loop(self, prev: Scrape, cur: Scrape) -> Table:
        grid = Table.grid(padding=(0, 2))
        p50 = delta_quantile(prev, cur, LAG, 0.5)
        p99 = delta_quantile(prev, cur, LAG, 0.99)
        busy = rate(prev, cur, "loopwatch_event_loop_busy_seconds_total")
        stall_now = cur.value("loopwatch_event_loop_stall_seconds") or 0.0
        total = cur.value("loopwatch_event_loop_stalls_total") or 0.0
        lag_style = "red" if (p99 or 0.0) >= 0.1 else "yellow" if (p99 or 0.0) >= 0.01 else "green"
        grid.add_row(
            Text("loop lag", style="bold"),
            Text(f"p50 {_ms(p50)}  p99 {_ms(p99)}", style=lag_style),
            Text(sparkline(self.lag_p99), style=lag_style),
        )
        grid.add_row(
            Text("utilization", style="bold"),
            Text("-" if busy is None else f"{min(busy, 1.0):.0%}"),
            Text("" if busy is not None else "(needs loopwatch.new_event_loop())", style="dim"),
        )
        now = (
            Text(f"STALL IN PROGRESS: {stall_now:.1f} s", style="bold white on red")
            if stall_now > 0
            else Text("none in progress", style="green")
        )
        grid.add_row(Text("stalls", style="bold"), now, Text(f"{total:.0f} since start"))
        return grid


def _table(title: str) -> Table:
    return Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )


def _stalls(cur: Scrape) -> RenderableType:
    recent = (cur.stalls or [])[-SHOWN_STALLS:]
    table = _table("last stalls")
    for column in ("ended", "duration", "cause", "culprit", "worker / request"):
        table.add_column(column, overflow="fold")
    for stall in reversed(recent):
        who = stall.get("worker") or stall.get("request") or stall.get("task") or ""
        table.add_row(
            _clock(number(stall.get("at"))),
            _ms(number(stall.get("duration"))),
            Text(clean(stall.get("cause"), 16)),
            Text(_short(clean(stall.get("culprit")))),
            Text(clean(who)),
        )
    if cur.stalls is None:
        table.add_row("-", "", "", "not served here: see the `stall` lines of its log", "")
    elif not recent:
        table.add_row("-", "", "", "no stall yet", "")
    return table


def _clock(at: float | None) -> str:
    try:
        return "-" if at is None else time.strftime("%H:%M:%S", time.localtime(at))
    except (OverflowError, OSError, ValueError):
        return "-"


def _workers(prev: Scrape, cur: Scrape) -> Table:
    table = _table("workers")
    names = [clean(labels["worker"]) for labels, _ in cur.series("loopwatch_worker_info")]
    # A name is never cut (you look for it, you grep for it): the other columns give way.
    table.add_column("worker", min_width=max([6, *map(len, names)]), no_wrap=True)
    moved = [f"auto: {clean(d.get('strategy'))}" for d in cur.decisions.values()]
    table.add_column("strategy", min_width=max([8, *map(len, moved)]), overflow="fold")
    for column in ("calls/s", "active", "errors", "timeouts", "p99 call", "p99 wait"):
        table.add_column(column, justify="right", no_wrap=True)
    for labels, _ in sorted(cur.series("loopwatch_worker_info"), key=lambda s: s[0]["worker"]):
        worker, strategy = labels["worker"], labels["strategy"]
        shown = strategy
        decision = cur.decisions.get(worker)
        if decision is not None and isinstance(decision.get("strategy"), str):
            # "auto": the calls are counted under the strategy that runs them now.
            strategy = decision["strategy"]
            shown = f"auto: {strategy}"
        keys = {"worker": worker, "strategy": strategy}
        calls = sum(
            rate(prev, cur, "loopwatch_tasks_total", **keys, outcome=outcome) or 0.0
            for outcome in ("ok", "error", "timeout", "cancelled")
        )
        errors = cur.value("loopwatch_tasks_total", **keys, outcome="error") or 0.0
        timeouts = cur.value("loopwatch_tasks_total", **keys, outcome="timeout") or 0.0
        table.add_row(
            Text(clean(worker)),
            Text(clean(shown)),
            f"{calls:.1f}",
            f"{cur.value('loopwatch_tasks_in_flight', worker=worker) or 0.0:.0f}",
            Text(f"{errors:.0f}", style="red" if errors else ""),
            Text(f"{timeouts:.0f}", style="red" if timeouts else ""),
            _ms(delta_quantile(prev, cur, "loopwatch_task_duration_seconds", 0.99, **keys)),
            _ms(delta_quantile(prev, cur, "loopwatch_task_queue_wait_seconds", 0.99, **keys)),
        )
    if table.row_count == 0:
        table.add_row("-", "no workers", "", "", "", "", "", "")
    return table


def _decisions(cur: Scrape) -> Table:
    """Each "auto" worker: where it runs, how often it moved, and the last reason."""
    table = _table("auto")
    names = [clean(worker) for worker in cur.decisions]
    table.add_column("worker", min_width=max([6, *map(len, names)]), no_wrap=True)
    table.add_column("now", no_wrap=True)
    table.add_column("moves", justify="right", no_wrap=True)
    table.add_column("why", overflow="fold", ratio=1)
    for worker, decision in sorted(cur.decisions.items()):
        moves = number(decision.get("switches"))
        table.add_row(
            Text(clean(worker)),
            Text(clean(decision.get("strategy"))),
            f"{moves:.0f}" if moves is not None else "-",
            Text(clean(decision.get("reason"), limit=REASON_CHARS)),
        )
    return table


def _pools(cur: Scrape) -> Table:
    table = _table("pools")
    for column in ("executor", "busy", "capacity", "queued", "saturation"):
        table.add_column(column, justify="left" if column == "executor" else "right")
    pools = sorted(cur.series("loopwatch_executor_busy"), key=lambda s: s[0]["executor"])
    for labels, busy in pools:
        executor = labels["executor"]
        capacity = cur.value("loopwatch_executor_workers", executor=executor)
        queued = cur.value("loopwatch_executor_queued", executor=executor) or 0.0
        share = busy / capacity if capacity else None
        style = "red" if queued else "yellow" if share is not None and share >= 1 else ""
        table.add_row(
            Text(clean(executor)),
            f"{busy:.0f}",
            "-" if capacity is None else f"{capacity:.0f}",
            Text(f"{queued:.0f}", style=style),
            Text("-" if share is None else _bar(share), style=style),
        )
    if table.row_count == 0:
        table.add_row("-", "", "", "", "no pools")
    return table


def _short(culprit: str) -> str:
    """``/srv/app/src/shop/prices.py:12 fn`` as ``shop/prices.py:12 fn``: the part that differs."""
    where, _, function = culprit.partition(" ")
    parts = where.split("/")
    return "/".join(parts[-2:]) + (f" {function}" if function else "")


def _restarted(prev: Scrape, cur: Scrape) -> bool:
    return (cur.value(LAG + "_count") or 0.0) < (prev.value(LAG + "_count") or 0.0)


def _bar(share: float, width: int = 10) -> str:
    filled = round(min(share, 1.0) * width)
    return "█" * filled + "·" * (width - filled) + f" {share:.0%}"


def first_view(reader: Reader, interval_s: float) -> View:
    """Two scrapes ``interval_s`` apart: the view of that interval. Raises ScrapeError."""
    view = View(reader.url)
    view.add(reader.scrape())
    time.sleep(interval_s)
    view.add(reader.scrape())
    return view


def live(reader: Reader, view: View, interval_s: float, console: Console) -> None:
    """Refresh ``view`` every ``interval_s`` until interrupted; an outage is shown, not fatal.

    Piped (``top | tee log``), there is no screen to redraw: each refresh is printed in
    turn, as it comes. Rich's ``Live`` on a non-terminal prints only its last frame, at exit.
    """
    if not console.is_terminal:
        _stream(reader, view, interval_s, console)
        return
    with (
        _keys() as pressed,
        Live(view.render(), console=console, auto_refresh=False, screen=False) as screen,
    ):
        while pressed(interval_s) not in ("q", "Q"):
            try:
                view.add(reader.scrape())
            except ScrapeError as exc:
                view.problem = str(exc)
            screen.update(view.render(), refresh=True)


def _stream(reader: Reader, view: View, interval_s: float, console: Console) -> None:
    """One frame per refresh, flushed, each under the time it was taken."""
    while True:
        console.rule(time.strftime("%H:%M:%S"))
        console.print(view.render())
        console.file.flush()
        time.sleep(interval_s)
        try:
            view.add(reader.scrape())
        except ScrapeError as exc:
            view.problem = str(exc)


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], str | None]]:
    """A function that waits up to its argument's seconds for a key; the key, or None.

    On a terminal, keys are read one at a time (cbreak mode, restored on the way out);
    without one, it only waits.
    """
    stdin = sys.stdin
    if stdin is None or not stdin.isatty():

        def wait(seconds: float) -> None:
            time.sleep(seconds)

        yield wait
        return
    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def pressed(seconds: float) -> str | None:
        ready, _, _ = select.select([fd], [], [], seconds)
        return os.read(fd, 1).decode(errors="replace") if ready else None

    try:
        yield pressed
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
