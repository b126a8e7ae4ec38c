"""A script that blocks its loop inside a span, with no loopwatch code: for opentelemetry-instrument."""

from __future__ import annotations

import asyncio
import time

from opentelemetry import trace

tracer = trace.get_tracer("app")


def render_report() -> None:
    time.sleep(0.3)  # the blocking line


async def handle() -> None:
    with tracer.start_as_current_span("handle /report"):
        await asyncio.sleep(0.05)
        render_report()
        await asyncio.sleep(0.3)


async def main() -> None:
    await asyncio.create_task(handle())


if __name__ == "__main__":
    asyncio.run(main())
