"""Hello-world FastAPI apps for benchmarks/asgi_overhead.py: ``plain``, and ``watched``.

``watched`` is the same app wrapped in loopwatch's middleware, as a user would add it.
"""

from fastapi import FastAPI

from loopwatch.asgi import LoopwatchMiddleware

plain = FastAPI()


@plain.get("/")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


watched = LoopwatchMiddleware(plain)


def _instrumented() -> FastAPI:
    """``plain`` again, in a process instrumented for OpenTelemetry (SDK, in-memory ends)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    from loopwatch.otel import LoopwatchInstrumentor

    LoopwatchInstrumentor().instrument(
        meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
        tracer_provider=TracerProvider(),
    )
    return plain


def __getattr__(name: str) -> FastAPI:
    # ``otel`` instruments the process: only when uvicorn asks for it.
    if name == "otel":
        return _instrumented()
    if name == "otel_no_factory":
        return _without_task_factory()
    raise AttributeError(name)


def _without_task_factory() -> FastAPI:
    """``otel`` with no task factory on 3.11 (stall spans lose their parent there)."""
    from loopwatch import taskcontext

    taskcontext.remember_contexts = lambda loop: False  # type: ignore[assignment]
    return _instrumented()
