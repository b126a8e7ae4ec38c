"""Built-in workloads: results, safe points, argument checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loopwatch import targets
from loopwatch.daemon import workloads


def test_countdown_yields_every_chunk_and_returns_n() -> None:
    """n=5000, chunk=1000: five safe points, returns 5000."""
    gen = workloads.countdown(5000, chunk=1000)
    assert sum(1 for _ in gen) == 5
    assert targets.drive(workloads.countdown, (), {"n": 5000}) == 5000
    with pytest.raises(ValueError, match="chunk >= 1"):
        targets.drive(workloads.countdown, (), {"n": 5, "chunk": 0})


def test_json_walk_counts_every_key_from_a_file_and_generated(tmp_path: Path) -> None:
    """Keys at every depth are counted; the generated document is deterministic and sized."""
    path = tmp_path / "doc.json"
    path.write_text(json.dumps({"a": 1, "b": {"c": [{"d": 1, "e": 2}], "f": None}}))
    assert targets.drive(workloads.json_walk, (), {"path": str(path)}) == 6
    doc = workloads.generated_document(0.5)
    assert 500_000 <= len(doc) <= 520_000
    assert doc == workloads.generated_document(0.5)
    assert targets.drive(workloads.json_walk, (), {"size_mb": 0.5}) > 10_000
    with pytest.raises(ValueError, match="exactly one of"):
        targets.drive(workloads.json_walk, (), {})


def test_blocking_io_and_http_get_argument_checks() -> None:
    """blocking_io sleeps in steps; http_get refuses non-HTTP URLs (no file:// reads)."""
    assert targets.drive(workloads.blocking_io, (), {"seconds": 0.03, "step": 0.01}) == 0.03
    assert sum(1 for _ in workloads.blocking_io(0.03, step=0.01)) >= 3
    with pytest.raises(ValueError, match="http_get needs an http"):
        workloads.http_get("file:///etc/passwd")


def test_http_get_is_a_real_blocking_client() -> None:
    """It fetches from a real local HTTP server."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        size = workloads.http_get(f"http://127.0.0.1:{server.server_address[1]}/", timeout=5)
        assert size > 0
    finally:
        server.shutdown()
        server.server_close()
