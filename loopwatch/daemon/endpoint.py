"""The metrics endpoint: a small HTTP(S) server of its own, bounded in threads, time and bytes.

One thread reads every connection's request head with a selector, so clients that
connect and trickle bytes (or say nothing) cost a file descriptor each, never a thread:
each must send its whole head within ``HEAD_DEADLINE_S`` and ``MAX_HEAD_BYTES``. Complete
requests go to ``WORKERS`` threads that render the registry. All of it runs beside the
event loop, so scrapes answer while the loop is stuck.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import selectors
import socket
import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder

from loopwatch.daemon.config import MetricsConfig
from loopwatch.daemon.errors import ConfigError, EndpointError
from loopwatch.daemon.worker_stats import WorkerCollector, fast_exposition

log = structlog.get_logger("loopwatch.endpoint")

# Absolute deadline for a client to send its request head, however slowly it trickles.
HEAD_DEADLINE_S = 5.0
MAX_HEAD_BYTES = 8192
# Connections still sending their head; past it the oldest one makes room.
MAX_PENDING = 1024
# Threads rendering scrapes: a scrape is ~1-150 ms of CPU and holds the GIL meanwhile.
WORKERS = 4
# Writing a response to a client that does not read ends after this long.
WRITE_TIMEOUT_S = 10.0
# When accept() fails for want of file descriptors, it rests this long instead of
# spinning on a listening socket that stays readable.
ACCEPT_PAUSE_S = 0.05
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass(eq=False)
class _Pending:
    """A connection still sending its request head."""

    sock: socket.socket
    deadline: float
    head: bytearray = field(default_factory=bytearray)
    handshaken: bool = True


def _ssl_context(cfg: MetricsConfig) -> ssl.SSLContext | None:
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=cfg.tls_cert, keyfile=cfg.tls_key)
        if cfg.client_ca is not None:
            context.load_verify_locations(cafile=cfg.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"metrics TLS files cannot be loaded: {exc}") from exc
    return context


class MetricsEndpoint:
    """Serves ``registry`` at ``http(s)://host:port/metrics`` from threads of its own."""

    def __init__(
        self,
        cfg: MetricsConfig,
        registry: CollectorRegistry,
        workers: WorkerCollector | None = None,
        stalls: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self._cfg = cfg
        self._registry = registry
        self._stalls = stalls
        # What "auto" chose for each worker (``/auto``), set by whoever knows.
        self.decisions: Callable[[], list[dict[str, Any]]] | None = None
        # Written directly rather than through prometheus-client: with hundreds of
        # workers these are most of a scrape (see worker_stats).
        self._worker_stats = workers
        self._listener: socket.socket | None = None
        self._ssl: ssl.SSLContext | None = None
        self._pending: OrderedDict[socket.socket, _Pending] = OrderedDict()
        self._workers: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._accept_paused_until = 0.0
        self.out_of_fds = 0  # accept() failures for want of descriptors

    @property
    def url(self) -> str | None:
        """Where it listens, once started."""
        if self._listener is None:
            return None
        scheme = "https" if self._ssl is not None else "http"
        host, port = self._listener.getsockname()[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"{scheme}://{host}:{port}/metrics"

    def start(self) -> None:
        """Bind and serve; raises EndpointError when the address cannot be used."""
        self._ssl = _ssl_context(self._cfg)
        family = socket.AF_INET6 if ":" in self._cfg.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        # A restart right after SIGKILL must bind again.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self._cfg.host, self._cfg.port))
            listener.listen(MAX_PENDING)
        except OSError as exc:
            listener.close()
            raise EndpointError(
                f"cannot serve metrics on {self._cfg.host}:{self._cfg.port}: {exc.strerror or exc}"
            ) from exc
        listener.settimeout(0.0)  # non-blocking
        try:
            # Made here, not in the thread: a thread that found no descriptor left for
            # it would die, and the endpoint with it, silently (seen under load).
            selector = selectors.DefaultSelector()
        except OSError as exc:
            listener.close()
            raise EndpointError(f"cannot serve metrics: {exc.strerror or exc}") from exc
        self._listener = listener
        self._stopped.clear()
        self._workers = ThreadPoolExecutor(WORKERS, thread_name_prefix="loopwatch-scrape")
        self._thread = threading.Thread(
            target=self._serve, args=(selector,), name="loopwatch-metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close every socket."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        if self._workers is not None:
            self._workers.shutdown(wait=False, cancel_futures=True)
            self._workers = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    # --- the reader thread -------------------------------------------------------------

    def _serve(self, selector: selectors.BaseSelector) -> None:
        assert self._listener is not None
        with selector:
            selector.register(self._listener, selectors.EVENT_READ, None)
            listening = True
            while not self._stopped.is_set():
                now = monotonic()
                if not listening and now >= self._accept_paused_until:
                    selector.register(self._listener, selectors.EVENT_READ, None)
                    listening = True
                for key, _ in selector.select(timeout=0.25):
                    if key.data is None:
                        if not self._accept(selector):
                            selector.unregister(self._listener)
                            listening = False
                    else:
                        self._advance(selector, key.data)
                self._expire(selector, monotonic())
            for pending in list(self._pending.values()):
                self._drop(selector, pending)

    def _accept(self, selector: selectors.BaseSelector) -> bool:
        """Accept what is waiting; False when out of descriptors (then rest a moment)."""
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno not in _OUT_OF_FDS:
                    return True  # ECONNABORTED and the like: that client's problem
                self.out_of_fds += 1
                if self._pending:
                    # Make room, and take the next one now: the oldest client still
                    # sending its head goes first, so a queue of idle connections
                    # ahead of a scrape is worked through at once, not one per pause.
                    self._drop(selector, next(iter(self._pending.values())))
                    continue
                # Nothing of ours to give back: the descriptors are used elsewhere.
                self._accept_paused_until = monotonic() + ACCEPT_PAUSE_S
                return False
            if len(self._pending) >= MAX_PENDING:
                self._drop(selector, next(iter(self._pending.values())))
            self._admit(selector, sock)

    def _admit(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        sock.settimeout(0.0)  # non-blocking
        pending = _Pending(sock, monotonic() + HEAD_DEADLINE_S)
        if self._ssl is not None:
            pending.sock = self._ssl.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
            pending.handshaken = False
        self._pending[pending.sock] = pending
        selector.register(pending.sock, selectors.EVENT_READ, pending)
        self._advance(selector, pending)  # TLS: the handshake starts now

    def _advance(self, selector: selectors.BaseSelector, pending: _Pending) -> None:
        sock = pending.sock
        try:
            if not pending.handshaken:
                assert isinstance(sock, ssl.SSLSocket)
                sock.do_handshake()
                pending.handshaken = True
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    self._drop(selector, pending)
                    return
                pending.head += chunk
                if b"\r\n\r\n" in pending.head or len(pending.head) > MAX_HEAD_BYTES:
                    break
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return  # more to come
        except OSError:
            self._drop(selector, pending)
            return
        selector.unregister(sock)
        del self._pending[sock]
        assert self._workers is not None
        try:
            self._workers.submit(self._respond, sock, bytes(pending.head))
        except RuntimeError:  # shutting down
            sock.close()

    def _expire(self, selector: selectors.BaseSelector, now: float) -> None:
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.deadline > now:
                return
            self._drop(selector, oldest)

    def _drop(self, selector: selectors.BaseSelector, pending: _Pending) -> None:
        self._pending.pop(pending.sock, None)
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(pending.sock)
        pending.sock.close()

    # --- the worker threads ------------------------------------------------------------

    def _respond(self, sock: socket.socket, head: bytes) -> None:
        with sock:
            try:
                sock.settimeout(WRITE_TIMEOUT_S)
                sock.sendall(self._response(head))
            except OSError:
                return

    def _response(self, head: bytes) -> bytes:
        if len(head) > MAX_HEAD_BYTES:
            return _plain(431, "Request Header Fields Too Large")
        lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _plain(400, "Bad Request")
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return _plain(405, "Method Not Allowed")
        documents = {"/stalls": ("stalls", self._stalls), "/auto": ("workers", self.decisions)}
        key, source = documents.get(target, ("", None))
        if source is not None:
            return _ok(method, json.dumps({key: source()}).encode(), "application/json")
        if target not in ("/metrics", "/"):
            return _plain(404, "Not Found")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if self._worker_stats is not None:
            # Always the text format (0.0.4): Prometheus accepts it, and the worker
            # families are written in it directly.
            with fast_exposition():
                body = generate_latest(self._registry)
            body += self._worker_stats.exposition()
            content_type = CONTENT_TYPE_LATEST
        else:
            encoder, content_type = choose_encoder(headers.get("accept", ""))
            body = encoder(self._registry)
        gzipped = "gzip" in headers.get("accept-encoding", "")
        return _ok(method, body, content_type, gzipped=gzipped)


def _ok(method: str, body: bytes, content_type: str, *, gzipped: bool = False) -> bytes:
    extra = ""
    if gzipped:
        body = gzip.compress(body, compresslevel=1)
        extra = "Content-Encoding: gzip\r\n"
    status = (
        f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    )
    return status.encode() + (b"" if method == "HEAD" else body)


def _plain(code: int, reason: str) -> bytes:
    body = f"{reason}\n".encode()
    return (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
