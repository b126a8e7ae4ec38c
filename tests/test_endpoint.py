"""The metrics endpoint: binds where told, survives bad clients, TLS and client certs."""

from __future__ import annotations

import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from prometheus_client import CollectorRegistry

from daemon.app import build_app
from daemon.config import DaemonConfig, MetricsConfig
from daemon.endpoint import MetricsEndpoint
from daemon.errors import ConfigError, EndpointError
from daemon.metrics import Metrics
from tests.helpers import free_port


@pytest.fixture
def endpoint(registry: CollectorRegistry) -> Iterator[MetricsEndpoint]:
    """The endpoint as the composition root builds it (which also drops ``_created``)."""
    app = build_app(DaemonConfig(metrics=MetricsConfig(port=free_port())), registry=registry)
    ep = app.endpoint
    assert ep is not None
    ep.start()
    yield ep
    ep.stop()


def get(url: str, context: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, timeout=5, context=context) as response:
        return str(response.read().decode())


def test_serves_metrics_on_loopback_by_default(endpoint: MetricsEndpoint) -> None:
    """Default host is 127.0.0.1; the page has our metrics and no _created series."""
    assert endpoint.url is not None
    assert endpoint.url.startswith("http://127.0.0.1:")
    body = get(endpoint.url)
    assert "loopwatch_build_info" in body
    assert "_created" not in body


def test_garbage_oversized_and_silent_clients_do_not_wedge_it(endpoint: MetricsEndpoint) -> None:
    """Binary junk, a 1 MB request line and idle connections; scrapes still answer fast."""
    assert endpoint.url is not None
    host, port = "127.0.0.1", int(endpoint.url.split(":")[2].split("/")[0])
    silent = [socket.create_connection((host, port)) for _ in range(20)]
    try:
        with socket.create_connection((host, port)) as junk:
            junk.sendall(b"\x00\xff" * 1000 + b"\r\n\r\n")
        with socket.create_connection((host, port)) as big:
            try:
                big.sendall(b"GET /" + b"a" * 1_000_000 + b" HTTP/1.1\r\n\r\n")
            except OSError:
                pass  # the server may hang up mid-send: that is fine
        started = time.monotonic()
        assert "loopwatch_build_info" in get(endpoint.url)
        # Far below the 10 s a silent client may hold its own thread: nobody waits on it.
        assert time.monotonic() - started < 3.0
    finally:
        for sock in silent:
            sock.close()


def test_port_in_use_is_an_endpoint_error(registry: CollectorRegistry) -> None:
    """A taken port raises EndpointError naming the address."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        ep = MetricsEndpoint(MetricsConfig(port=port), registry)
        with pytest.raises(EndpointError, match=f"127.0.0.1:{port}"):
            ep.start()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_config(tmp_path: Path, ca: trustme.CA, *, client_ca: bool) -> MetricsConfig:
    server = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return MetricsConfig(
        port=free_port(), tls_cert=str(cert), tls_key=str(key),
        client_ca=str(ca_path) if client_ca else None,
    )  # fmt: skip


def test_https_only_when_tls_is_set(
    tmp_path: Path, ca: trustme.CA, registry: CollectorRegistry
) -> None:
    """With a certificate the endpoint speaks HTTPS and refuses plain HTTP."""
    Metrics(registry)
    ep = MetricsEndpoint(tls_config(tmp_path, ca, client_ca=False), registry)
    ep.start()
    try:
        assert ep.url is not None
        assert ep.url.startswith("https://")
        context = ssl.create_default_context()
        ca.configure_trust(context)
        assert "python_info" in get(ep.url, context)
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            get(ep.url.replace("https", "http"))
        # A silent TLS client does not block the handshake of others.
        with socket.create_connection(("127.0.0.1", int(ep.url.split(":")[2].split("/")[0]))):
            assert "python_info" in get(ep.url, context)
    finally:
        ep.stop()


def test_client_certificate_required_with_client_ca(
    tmp_path: Path, ca: trustme.CA, registry: CollectorRegistry
) -> None:
    """With client_ca, a client without a certificate signed by it is refused."""
    Metrics(registry)
    ep = MetricsEndpoint(tls_config(tmp_path, ca, client_ca=True), registry)
    ep.start()
    try:
        assert ep.url is not None
        anonymous = ssl.create_default_context()
        ca.configure_trust(anonymous)
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            get(ep.url, anonymous)
        authenticated = ssl.create_default_context()
        ca.configure_trust(authenticated)
        ca.issue_cert("prometheus").configure_cert(authenticated)
        assert "python_info" in get(ep.url, authenticated)
        stranger = ssl.create_default_context()
        ca.configure_trust(stranger)
        trustme.CA().issue_cert("intruder").configure_cert(stranger)
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            get(ep.url, stranger)
    finally:
        ep.stop()


def test_unreadable_tls_files_are_a_config_error(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    """Missing certificate files are reported as config errors, before binding."""
    cfg = MetricsConfig(
        port=free_port(), tls_cert=str(tmp_path / "no.crt"), tls_key=str(tmp_path / "no.key")
    )
    with pytest.raises(ConfigError, match="metrics TLS files cannot be loaded"):
        MetricsEndpoint(cfg, registry).start()
