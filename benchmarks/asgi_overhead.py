"""Per-request cost of LoopwatchMiddleware: requests/s of a hello-world FastAPI app under uvicorn.

The same app (``benchmarks/hello_app.py``) served by uvicorn (one process, its default loop
and HTTP parser, no access log) bare and wrapped in ``LoopwatchMiddleware``, which also runs
the watcher (lag probe every 10 ms, stall watchdog). The load is a small keep-alive HTTP/1.1
client of our own (``LOAD`` below: N connections, each sending its next request when the
previous response is read), in its own process. On a 2-core host the server is pinned to one
core and the client to the other, so they do not take turns on one. Runs alternate between
the two apps; medians are quoted.

Usage: python benchmarks/asgi_overhead.py [--seconds 10] [--runs 5] [--connections 32]
Writes benchmarks/results/asgi_overhead.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU, CLIENT_CPU = 0, 1

LOAD = r"""
import asyncio, sys, time

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"

async def connection(port, warm_until, end, counts):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while (now := time.perf_counter()) < end:
        writer.write(REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        if now >= warm_until:
            counts[0] += 1
    writer.close()

async def main(port, connections, warmup, seconds):
    counts = [0]
    start = time.perf_counter()
    await asyncio.gather(
        *(connection(port, start + warmup, start + warmup + seconds, counts) for _ in range(connections))
    )
    print(counts[0] / seconds)

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cpu: int) -> dict[str, object]:
    """Popen arguments that pin the child to ``cpu`` when the host has it."""
    if os.cpu_count() and os.cpu_count() > cpu and hasattr(os, "sched_setaffinity"):  # type: ignore[operator]
        return {"preexec_fn": lambda: os.sched_setaffinity(0, {cpu})}
    return {}


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        else:
            return


def requests_per_s(app: str, connections: int, seconds: float) -> float:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", f"benchmarks.hello_app:{app}", "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, **pinned(SERVER_CPU),  # type: ignore[call-overload]
    )  # fmt: skip
    try:
        wait_listening(port, server)
        out = subprocess.run(
            [sys.executable, "-c", LOAD, str(port), str(connections), "2.0", str(seconds)],
            capture_output=True, text=True, check=True, **pinned(CLIENT_CPU),  # type: ignore[call-overload]
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(20)
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"plain": [], "watched": []}
    for _ in range(args.runs):  # interleaved: drift on a shared host hits both alike
        for app, runs in rates.items():
            runs.append(requests_per_s(app, args.connections, args.seconds))
    plain, watched = median(rates["plain"]), median(rates["watched"])
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "seconds": args.seconds, "connections": args.connections, "runs": args.runs,
        "requests_per_s": rates,
        "median_plain": plain, "median_watched": watched,
        "cost_percent": 100 * (1 - watched / plain),
        "us_per_request_added": 1e6 / watched - 1e6 / plain,
    }  # fmt: skip
    (ROOT / "benchmarks/results/asgi_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| app | requests/s (median) | runs |")
    print("| --- | --- | --- |")
    print(f"| FastAPI, bare | {plain:.0f} | {', '.join(f'{r:.0f}' for r in rates['plain'])} |")
    print(
        f"| FastAPI + LoopwatchMiddleware | {watched:.0f} | "
        f"{', '.join(f'{r:.0f}' for r in rates['watched'])} |"
    )
    print(
        f"\ncost: {result['cost_percent']:.1f}% ({result['us_per_request_added']:.1f} µs/request)"
    )


if __name__ == "__main__":
    main()
