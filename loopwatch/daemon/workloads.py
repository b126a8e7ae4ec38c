"""Built-in targets: blocking I/O, a real blocking HTTP client, and CPU-heavy generators.

CPU workloads are generators: each ``yield`` is a safe point where the cooperative
strategy may give the loop back; every other strategy runs them to completion.
They are module-level functions so process pools pickle them by reference, and they
take small arguments (a size or a path) so no big payload is pickled per call.
"""

from __future__ import annotations

import json
import random
import time
import urllib.request
from collections.abc import Generator
from functools import cache
from pathlib import Path
from typing import Any

# Iterations between safe points: checking the clock every iteration would halve
# the throughput; every ~1000 iterations costs nothing measurable.
CHUNK = 1000


def blocking_io(seconds: float = 0.2, step: float = 0.01) -> Generator[None, None, float]:
    """Block for ``seconds`` like a sync client reading a slow socket, ``step`` at a time.

    Each step is a safe point: on ``cooperative`` the loop gets a turn between reads;
    every other strategy simply blocks for the whole ``seconds``.
    """
    if seconds < 0 or step <= 0:
        raise ValueError(f"blocking_io needs seconds >= 0 and step > 0: {seconds}, {step}")
    end = time.perf_counter() + seconds
    while (left := end - time.perf_counter()) > 0:
        time.sleep(min(step, left))
        yield
    return seconds


def http_get(url: str, timeout: float = 5.0) -> int:
    """GET ``url`` with urllib (a real blocking client); return the number of body bytes."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"http_get needs an http(s) URL: {url!r}")
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - scheme checked
        return len(response.read())


def countdown(n: int = 10_000_000, chunk: int = CHUNK) -> Generator[None, None, int]:
    """The tutorial's CPU loop: count ``n`` down to zero, with a safe point every ``chunk``."""
    if n < 0 or chunk < 1:
        raise ValueError(f"countdown needs n >= 0 and chunk >= 1: n={n}, chunk={chunk}")
    done = n
    while n > 0:
        stop = max(n - chunk, 0)
        while n > stop:
            n -= 1
        yield
    return done


def json_walk(
    path: str | None = None, size_mb: float | None = None, chunk: int = CHUNK
) -> Generator[None, None, int]:
    """Parse a multi-MB JSON document and count every key in it.

    ``path`` reads a file; ``size_mb`` uses a deterministic document generated once per
    process. The parse itself is one C call that cannot yield: on the loop it blocks for
    its whole length, which is why big documents belong in a process.
    """
    if (path is None) == (size_mb is None):
        raise ValueError("json_walk needs exactly one of path= or size_mb=")
    data = Path(path).read_bytes() if path is not None else generated_document(float(size_mb or 0))
    document = json.loads(data)
    keys = 0
    stack: list[Any] = [document]
    visited = 0
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            keys += len(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        visited += 1
        if visited % chunk == 0:
            yield
    return keys


@cache
def generated_document(size_mb: float) -> bytes:
    """A deterministic JSON document of about ``size_mb`` MB: nested records with many keys."""
    if not 0 < size_mb <= 512:
        raise ValueError(f"size_mb must be in (0, 512]: {size_mb}")
    rng = random.Random(42)  # noqa: S311 - test data, not crypto
    target = int(size_mb * 1_000_000)
    records = []
    size = 0
    i = 0
    while size < target:
        record = {
            "id": i,
            "name": f"user-{i}",
            "tags": [f"t{rng.randrange(100)}" for _ in range(3)],
            "address": {"city": f"city-{rng.randrange(1000)}", "zip": f"{rng.randrange(10**5):05}"},
            "scores": {f"s{j}": rng.random() for j in range(4)},
        }
        encoded = json.dumps(record)
        size += len(encoded) + 2
        records.append(record)
        i += 1
    return json.dumps({"records": records}).encode()
