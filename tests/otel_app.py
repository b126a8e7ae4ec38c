"""A FastAPI app with a blocking handler and no loopwatch code: for opentelemetry-instrument uvicorn."""

from __future__ import annotations

import time

from fastapi import FastAPI

app = FastAPI()


@app.get("/report")
async def report() -> dict[str, str]:
    time.sleep(0.3)  # the bug: a blocking call inside an async handler
    return {"report": "done"}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
