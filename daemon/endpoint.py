"""The metrics endpoint: prometheus-client's WSGI app on a hardened threaded HTTP(S) server.

It runs on its own threads, so it answers while the event loop is stuck.
"""

from __future__ import annotations

import socket
import ssl
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app

from daemon.config import MetricsConfig
from daemon.errors import ConfigError, EndpointError

# A client that connects and then says nothing (slow-loris) holds one thread for at
# most this long; it never blocks the accept loop or other scrapes.
CLIENT_TIMEOUT_S = 10.0


class _QuietHandler(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Scrapes are not worth a log line each."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True  # a restart right after SIGKILL must bind again
    ssl_context: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, on the per-connection thread, not in accept():
        # prometheus-client wraps the listening socket, so one silent client stalls
        # every scrape. Here it costs that client's thread its timeout, nothing more.
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(CLIENT_TIMEOUT_S)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            request.close()
            return
        with tls:
            super().finish_request(tls, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Broken clients are the client's problem; keep stderr for our own logs."""


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
    """Serves ``registry`` at ``http(s)://host:port/metrics`` from daemon threads."""

    def __init__(self, cfg: MetricsConfig, registry: CollectorRegistry) -> None:
        self._cfg = cfg
        self._registry = registry
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str | None:
        """Where it listens, once started (the real port when configured as 0 is not used)."""
        if self._server is None:
            return None
        scheme = "https" if self._server.ssl_context is not None else "http"
        host, port = str(self._server.server_address[0]), int(self._server.server_address[1])
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{port}/metrics"

    def start(self) -> None:
        """Bind and serve; raises EndpointError when the address cannot be used."""
        context = _ssl_context(self._cfg)
        family = socket.AF_INET6 if ":" in self._cfg.host else socket.AF_INET
        server_class = type("_BoundServer", (_Server,), {"address_family": family})
        try:
            server = server_class((self._cfg.host, self._cfg.port), _QuietHandler)
        except OSError as exc:
            raise EndpointError(
                f"cannot serve metrics on {self._cfg.host}:{self._cfg.port}: {exc.strerror or exc}"
            ) from exc
        server.ssl_context = context
        server.set_app(make_wsgi_app(self._registry))
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True,
            name="loopwatch-metrics",
        )  # fmt: skip
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting scrapes and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
