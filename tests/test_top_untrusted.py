"""``loopwatch top`` treats what it reads as untrusted: hostile endpoints, served for real."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, Histogram, Info, generate_latest
from rich.console import Console

from loopwatch.daemon.top import Reader, View
from tests.helpers import run_loopwatch

Handler = Callable[[BaseHTTPRequestHandler], None]
Serve = Callable[[Handler, Handler], str]


def metrics_body(workers: tuple[str, ...] = ("w",)) -> bytes:
    registry = CollectorRegistry()
    Histogram("loopwatch_event_loop_lag_seconds", "lag", registry=registry).observe(0.001)
    info = Info("loopwatch_worker", "w", ["worker"], registry=registry)
    for worker in workers:
        info.labels(worker).info({"strategy": "thread", "target": "m:f"})
    return generate_latest(registry)


class Endpoint:
    """A real HTTP server on loopback whose /metrics and /stalls say what a test wants."""

    def __init__(self, metrics: Handler, stalls: Handler) -> None:
        routes = {"/metrics": metrics, "/stalls": stalls}

        def missing(handler: BaseHTTPRequestHandler) -> None:
            handler.send_error(404)

        class Serving(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                routes.get(self.path, missing)(self)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Serving)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def body(data: bytes, content_type: str = "text/plain") -> Handler:
    def send(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return send


def stalls_of(*stalls: dict[str, object]) -> Handler:
    return body(json.dumps({"stalls": list(stalls)}).encode(), "application/json")


@pytest.fixture
def serve() -> Iterator[Callable[[Handler, Handler], str]]:
    started: list[Endpoint] = []

    def start(metrics: Handler, stalls: Handler) -> str:
        endpoint = Endpoint(metrics, stalls)
        started.append(endpoint)
        return endpoint.url

    yield start
    for endpoint in started:
        endpoint.close()


def top_once(url: str, **env: str) -> tuple[int, str, str]:
    out = run_loopwatch(
        "top", "--url", url, "--once", "--interval", "0.05", env={**os.environ, **env}, timeout=60
    )
    return out.returncode, out.stdout, out.stderr


HOSTILE = "[/bold][link=https://evil.example]x[/link][bold red]RED"
ESCAPES = "\x1b[2J\x1b]0;pwned\x07\x1b[31m"


def test_markup_in_names_and_culprits_is_shown_as_text_never_read(serve: Serve) -> None:
    url = serve(
        body(metrics_body((f"w{HOSTILE}",))),
        stalls_of(
            {
                "at": time.time(),
                "duration": 0.3,
                "cause": "wait",
                "culprit": f"/a/b.py:1 f{HOSTILE}",
                "request": HOSTILE,
            }
        ),
    )
    code, out, err = top_once(url)
    assert code == 0, err
    assert f"w{HOSTILE}" in out
    assert f"f{HOSTILE}" in out
    assert "Traceback" not in err


def test_terminal_escapes_never_reach_the_terminal(serve: Serve) -> None:
    url = serve(
        body(metrics_body((f"w{ESCAPES}",))),
        stalls_of(
            {
                "at": time.time(),
                "duration": 0.3,
                "cause": ESCAPES,
                "culprit": f"/a.py:1 f{ESCAPES}",
                "worker": ESCAPES,
            }
        ),
    )
    code, out, err = top_once(url)
    assert code == 0, err
    assert "\x1b" not in out
    assert "\x07" not in out
    assert "\ufffd]0;pwned" in out  # shown, defused


@pytest.mark.parametrize(
    "stall",
    [
        {"at": "yesterday", "duration": 0.2},
        {"at": time.time(), "duration": None},
        {"at": 1e300, "duration": 1e300},
        {"at": float("nan"), "duration": float("nan")},
        {"at": time.time(), "duration": 0.2, "culprit": "/srv/\udcff\udcfe.py:1 f", "cause": ["x"]},
        {"at": True, "duration": {"a": 1}, "culprit": 12, "worker": 3.5},
    ],
    ids=["at-text", "null-duration", "huge", "nan", "undecodable-path", "wrong-types"],
)
def test_malformed_stall_fields_are_shown_as_unknown_not_a_traceback(
    serve: Serve, stall: dict[str, object]
) -> None:
    raw = json.dumps({"stalls": [stall]}).encode()  # NaN as JSON's NaN, surrogates escaped
    url = serve(body(metrics_body()), body(raw, "application/json"))
    code, out, err = top_once(url, PYTHONIOENCODING="utf-8:strict")
    assert code == 0, err
    assert "Traceback" not in err
    assert "last stalls" in out


def test_a_huge_culprit_is_cut_and_drawn_at_once(serve: Serve) -> None:
    url = serve(
        body(metrics_body()),
        stalls_of(
            {
                "at": time.time(),
                "duration": 0.3,
                "cause": "cpu",
                "culprit": "/a.py:1 " + "f" * 5_000_000,
            }
        ),
    )
    started = time.monotonic()
    code, out, err = top_once(url)
    assert code == 0, err
    assert time.monotonic() - started < 20
    assert "…" in out
    assert max(len(line) for line in out.splitlines()) < 1000


def test_a_body_trickled_byte_by_byte_meets_a_deadline(serve: Serve) -> None:
    def trickle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        for _ in range(100):
            handler.wfile.write(b"#")
            handler.wfile.flush()
            time.sleep(2)

    url = serve(trickle, stalls_of())
    started = time.monotonic()
    code, _, err = top_once(url)
    assert code == 69
    assert time.monotonic() - started < 15
    assert "no whole answer within" in err


def test_a_body_past_the_size_cap_is_refused_without_reading_it_all(serve: Serve) -> None:
    def flood(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(1_500_000_000))
        handler.end_headers()
        chunk = b"#" * 1_048_576
        try:
            for _ in range(1500):
                handler.wfile.write(chunk)
        except OSError:
            pass  # the reader hung up: what we want

    url = serve(flood, stalls_of())
    code, _, err = top_once(url)
    assert code == 69
    assert "larger than 32 MB" in err


def test_names_are_whole_when_piped_and_in_an_80_column_terminal(serve: Serve) -> None:
    name = "billing-sync-of-the-eu-west-accounts-receivable"
    culprit = "/srv/app/src/shop/billing/receivable/sync.py:1234 reconcile_every_open_invoice"
    url = serve(
        body(metrics_body((name, "io"))),
        stalls_of(
            {
                "at": time.time(),
                "duration": 0.3,
                "cause": "wait",
                "culprit": culprit,
                "worker": name,
            }
        ),
    )
    code, out, err = top_once(url)
    assert code == 0, err
    assert [line for line in out.splitlines() if name in line]
    assert "receivable/sync.py:1234 reconcile_every_open_invoice" in out
    # The same view in an 80-column terminal: the other columns give way to the name.
    view = View(url)
    reader = Reader(url)
    view.add(reader.scrape())
    view.add(reader.scrape())
    console = Console(width=80, record=True)
    console.print(view.render())
    screen = console.export_text()
    assert [line for line in screen.splitlines() if name in line and len(line) <= 80], screen
