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

from benchmarks.asgi_overhead import requests_per_s
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    idle: dict[str, list[float]] = {"bare 10 ms timer": [], "instrumented, idle": []}
    rates: dict[str, list[float]] = {"plain": [], "watched": [], "otel": []}
    for _ in range(args.runs):  # interleaved: drift on a shared host hits all alike
        idle["bare 10 ms timer"].append(measure([sys.executable, "-c", BARE_10MS], args.seconds))
        idle["instrumented, idle"].append(
            measure([sys.executable, "-c", IDLE_INSTRUMENTED], args.seconds)
        )
        for app, runs in rates.items():
            runs.append(requests_per_s(app, args.connections, args.seconds))
    floor, watched = median(idle["bare 10 ms timer"]), median(idle["instrumented, idle"])
    plain, watched_rate, otel = (median(rates[k]) for k in ("plain", "watched", "otel"))
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "seconds": args.seconds, "runs": args.runs, "connections": args.connections,
        "idle_cpu_share": idle, "idle_ratio_to_timer_floor": watched / floor,
        "requests_per_s": rates, "asgi_cost_percent": 100 * (1 - otel / plain),
        "asgi_cost_over_watched_percent": 100 * (1 - otel / watched_rate),
    }  # fmt: skip
    (ROOT / "benchmarks/results/otel_cost.json").write_text(json.dumps(result, indent=2) + "\n")
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


if __name__ == "__main__":
    main()
