"""The metrics endpoint: binds where told, survives bad clients, TLS and client certs."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import prometheus_client
import pytest
import trustme
from prometheus_client import CollectorRegistry

from loopwatch.daemon.app import build_app
from loopwatch.daemon.config import DaemonConfig, MetricsConfig
from loopwatch.daemon.endpoint import HEAD_DEADLINE_S, MAX_HEAD_BYTES, WORKERS, MetricsEndpoint
from loopwatch.daemon.errors import ConfigError, EndpointError
from loopwatch.daemon.metrics import Metrics
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def endpoint(registry: CollectorRegistry) -> Iterator[MetricsEndpoint]:
    """The endpoint as the composition root builds it; ``_created`` dropped as `loopwatch run` does."""
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
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


@pytest.fixture
def many_fds() -> Iterator[None]:
    """Room for thousands of sockets in this process (clients and server ends)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 8192) if hard != resource.RLIM_INFINITY else 8192
    if wanted < 3200:
        pytest.skip(f"needs 3,200 file descriptors; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_scrapes_answer_while_1500_slow_clients_trickle_bytes(
    endpoint: MetricsEndpoint, many_fds: None
) -> None:
    """Slow-loris: 1,500 clients sending a byte a second cost no thread; scrapes answer."""
    assert endpoint.url is not None
    port = int(endpoint.url.split(":")[2].split("/")[0])
    threads_before = threading.active_count()
    clients = []
    try:
        for _ in range(1500):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
            clients.append(sock)
        for round_ in range(3):
            for sock in clients:
                with contextlib.suppress(OSError):  # evicted or expired: fine
                    sock.send(b"X")
            started = time.monotonic()
            assert "loopwatch_build_info" in get(endpoint.url)
            assert time.monotonic() - started < 2.0, f"scrape {round_} was slow"
            time.sleep(0.5)
        assert threading.active_count() - threads_before <= WORKERS
    finally:
        for sock in clients:
            sock.close()


def test_a_head_that_never_ends_is_cut_at_its_deadline_and_size(
    endpoint: MetricsEndpoint,
) -> None:
    """Bytes trickled forever are closed by the absolute deadline; a huge head gets 431."""
    assert endpoint.url is not None
    port = int(endpoint.url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port)) as big:
        big.sendall(b"GET /metrics HTTP/1.1\r\nX-Fill: " + b"a" * (MAX_HEAD_BYTES + 10))
        assert big.recv(100).startswith(b"HTTP/1.1 431 ")
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.settimeout(HEAD_DEADLINE_S + 3)
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < HEAD_DEADLINE_S + 2:
            try:
                slow.send(b"X")
            except OSError:
                closed = True
                break
            time.sleep(0.2)
        if not closed:
            closed = slow.recv(1) == b""
        assert closed
        assert time.monotonic() - started < HEAD_DEADLINE_S + 2


EMFILE_SCRIPT = """
import contextlib, json, os, resource, socket, time, urllib.request
from prometheus_client import CollectorRegistry
from loopwatch.daemon.app import build_app
from loopwatch.daemon.config import DaemonConfig, MetricsConfig
from tests.helpers import free_port

endpoint = build_app(
    DaemonConfig(metrics=MetricsConfig(port=free_port())), registry=CollectorRegistry()
).endpoint
endpoint.start()
port = int(endpoint.url.split(":")[2].split("/")[0])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
hogs = []
with contextlib.suppress(OSError):
    while True:
        hogs.append(os.open("/dev/null", os.O_RDONLY))
for _ in range(2):  # room for the two clients, none for the server's ends
    os.close(hogs.pop())
# Both sockets before either connects: else the server could accept the first with the
# last descriptor, and the second socket() would fail (seen once in CI under load).
clients = [socket.socket() for _ in range(2)]
for sock in clients:
    sock.connect(("127.0.0.1", port))
cpu = time.process_time()
time.sleep(1.0)
used = time.process_time() - cpu
out_of_fds = endpoint.out_of_fds
for sock in clients:
    sock.close()
for fd in hogs:
    os.close(fd)
with urllib.request.urlopen(endpoint.url, timeout=5) as response:
    answered = b"loopwatch_build_info" in response.read()
print(json.dumps({"used": used, "out_of_fds": out_of_fds, "answered": answered}))
"""


def test_accept_rests_instead_of_spinning_when_descriptors_run_out() -> None:
    """Out of file descriptors: accept pauses (no busy loop); scrapes come back after.

    In a process of its own: exhausting descriptors here would break pytest's threads.
    """
    result = subprocess.run(
        [sys.executable, "-c", EMFILE_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["out_of_fds"] >= 1
    assert found["out_of_fds"] < 100  # ~20 tries a second at most: resting, not spinning
    assert found["used"] < 0.3
    assert found["answered"]


LIMITED_ENDPOINT = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from prometheus_client import CollectorRegistry
from loopwatch.daemon.app import build_app
from loopwatch.daemon.config import DaemonConfig, MetricsConfig
from tests.helpers import free_port

endpoint = build_app(
    DaemonConfig(metrics=MetricsConfig(port=free_port())), registry=CollectorRegistry()
).endpoint
endpoint.start()
print(endpoint.url, flush=True)
sys.stdin.read()  # until the test is done
"""


def test_a_scrape_is_answered_within_2_s_past_300_idle_clients_at_a_64_fd_limit() -> None:
    """Idle connections fill every descriptor: they make room for the scrape at once."""
    idle: list[socket.socket] = []
    with subprocess.Popen(
        [sys.executable, "-c", LIMITED_ENDPOINT],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ) as server:  # fmt: skip
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            port = int(url.split(":")[2].split("/")[0])
            idle.extend(
                socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(300)
            )
            started = time.monotonic()
            body = get(url)
            took = time.monotonic() - started
        finally:
            for sock in idle:
                sock.close()
            server.kill()
    assert "loopwatch_build_info" in body
    assert took < 2.0, f"the scrape took {took:.1f} s"
