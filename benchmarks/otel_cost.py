"""What OpenTelemetry instrumentation costs: an idle loop, and a hello-world ASGI app.

- Idle: CPU share of an idle asyncio process (a 1 s sleep loop) instrumented with
  ``LoopwatchInstrumentor`` and the SDK's in-memory reader, against a bare asyncio loop
  waking every 10 ms (the timer floor, ``benchmarks/idle_cost.py``'s yardstick).
- ASGI: requests/s of ``benchmarks/hello_app.py`` under uvicorn (its default loop: uvloop
  here), plain, watched by ``LoopwatchMiddleware``, and in a process instrumented the same
  way (``hello_app:otel``), with
  ``benchmarks/asgi_overhead.py``'s load client, server and client pinned apart.

Runs alternate; medians are quoted.
Usage: python benchmarks/otel_cost.py [--seconds 10] [--runs 5]
Writes benchmarks/results/otel_cost.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib
import subprocess
import time

from benchmarks.asgi_overhead import LOAD, free_port, pinned, wait_listening
from benchmarks.idle_cost import BARE_10MS, ROOT, measure

IDLE_INSTRUMENTED = """
import asyncio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from loopwatch.otel import LoopwatchInstrumentor
LoopwatchInstrumentor().instrument(
    meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
    tracer_provider=TracerProvider(),
)
async def main():
    while True:
        await asyncio.sleep(1.0)
asyncio.run(main())
"""


def server_cpu_s(pid: int) -> float:
    """CPU seconds of every thread of ``pid`` (schedstat: ns, not clock ticks)."""
    total = 0
    for path in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += int(path.read_text().split()[0])
    return total / 1e9


def serve(app: str, connections: int, seconds: float) -> tuple[float, float]:
    """Requests/s, and the server's CPU microseconds per request, under the load client.

    CPU per request is what the instrumentation costs the server; requests/s also moves
    with what the host's neighbours take from the pinned core.
    """
    warmup = 2.0
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", f"benchmarks.hello_app:{app}", "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, **pinned(0),  # type: ignore[call-overload]
    )  # fmt: skip
    try:
        wait_listening(port, server)
        client = subprocess.Popen(
            [sys.executable, "-c", LOAD, str(port), str(connections), str(warmup), str(seconds)],
            stdout=subprocess.PIPE, text=True, **pinned(1),  # type: ignore[call-overload]
        )  # fmt: skip
        time.sleep(warmup)
        cpu0 = server_cpu_s(server.pid)
        time.sleep(seconds)
        cpu1 = server_cpu_s(server.pid)
        out, _ = client.communicate(timeout=60)
    finally:
        server.terminate()
        server.wait(20)
    rate = float(out.strip())
    return rate, (cpu1 - cpu0) / (rate * seconds) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--only", choices=("idle", "asgi"), default=None)
    # Apps of hello_app.py beside the three of the table (otel_no_factory: 3.11's task
    # factory off, to tell its cost), printed as extra rows.
    parser.add_argument("--also", default="")
    args = parser.parse_args()
    idle: dict[str, list[float]] = {"bare 10 ms timer": [], "instrumented, idle": []}
    apps = ["plain", "watched", "otel", *filter(None, args.also.split(","))]
    rates: dict[str, list[float]] = {app: [] for app in apps}
    cpu_us: dict[str, list[float]] = {app: [] for app in apps}
    for _ in range(args.runs):  # interleaved: drift on a shared host hits all alike
        if args.only != "asgi":
            idle["bare 10 ms timer"].append(
                measure([sys.executable, "-c", BARE_10MS], args.seconds)
            )
            idle["instrumented, idle"].append(
                measure([sys.executable, "-c", IDLE_INSTRUMENTED], args.seconds)
            )
        for app, runs in rates.items() if args.only != "idle" else ():
            rate, us = serve(app, args.connections, args.seconds)
            runs.append(rate)
            cpu_us[app].append(us)
    out = ROOT / "benchmarks/results/otel_cost.json"
    if args.only == "asgi" and out.exists():  # the idle rows of the last run stand
        idle = json.loads(out.read_text())["idle_cpu_share"]
    floor, watched = median(idle["bare 10 ms timer"]), median(idle["instrumented, idle"])
    plain, watched_rate, otel = (median(rates[k]) for k in ("plain", "watched", "otel"))
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "seconds": args.seconds, "runs": args.runs, "connections": args.connections,
        "idle_cpu_share": idle, "idle_ratio_to_timer_floor": watched / floor,
        "requests_per_s": rates, "asgi_cost_percent": 100 * (1 - otel / plain),
        "asgi_cost_over_watched_percent": 100 * (1 - otel / watched_rate),
        "server_cpu_us_per_request": cpu_us,
        "cpu_cost_percent": 100 * (median(cpu_us["otel"]) / median(cpu_us["plain"]) - 1),
        "cpu_cost_over_watched_percent": 100
        * (median(cpu_us["otel"]) / median(cpu_us["watched"]) - 1),
    }  # fmt: skip
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("| measure | plain | instrumented | ratio |")
    print("| --- | --- | --- | --- |")
    print(
        f"| idle CPU share of one core | {floor * 100:.2f}% (bare 10 ms timer) | "
        f"{watched * 100:.2f}% | {watched / floor:.2f}x |"
    )
    print(
        f"| hello-world requests/s | {plain:.0f} | {otel:.0f} | "
        f"{otel / plain:.3f} ({result['asgi_cost_percent']:.1f}% lost) |"
    )
    print(
        f"| hello-world requests/s, against LoopwatchMiddleware | {watched_rate:.0f} | "
        f"{otel:.0f} | {otel / watched_rate:.3f} |"
    )
    plain_us, watched_us, otel_us = (median(cpu_us[k]) for k in ("plain", "watched", "otel"))
    print(
        f"| server CPU per request | {plain_us:.1f} us | {otel_us:.1f} us | "
        f"{otel_us / plain_us:.3f} (+{result['cpu_cost_percent']:.1f}%) |"
    )
    print(
        f"| server CPU per request, against LoopwatchMiddleware | {watched_us:.1f} us | "
        f"{otel_us:.1f} us | {otel_us / watched_us:.3f} |"
    )
    for app in apps[3:]:
        us, rate = median(cpu_us[app]), median(rates[app])
        print(
            f"| {app}: server CPU per request, requests/s | {plain_us:.1f} us | {us:.1f} us, {rate:.0f}/s | {us / plain_us:.3f} |"
        )


if __name__ == "__main__":
    main()
