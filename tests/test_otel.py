"""OpenTelemetry: the instrumentor with the real SDK (in-memory metric reader, span exporter)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import uvloop
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

import loopwatch
from loopwatch.otel import LoopwatchInstrumentor
from tests.helpers import registry_value


@dataclass
class Otel:
    """The SDK's in-memory ends, and a tracer of the application's own."""

    reader: InMemoryMetricReader
    spans: InMemorySpanExporter
    tracer_provider: TracerProvider

    def metrics(self) -> dict[str, Any]:
        """Every metric of the ``loopwatch`` scope, by name."""
        found = {}
        data = self.reader.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                if scope.scope.name == "loopwatch":
                    found.update({m.name: m for m in scope.metrics})
        return found

    def stall_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == "asyncio.eventloop.stall"]


@pytest.fixture
def otel() -> Iterator[Otel]:
    reader = InMemoryMetricReader()
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    instrumentor = LoopwatchInstrumentor()
    instrumentor.instrument(
        meter_provider=MeterProvider(metric_readers=[reader]), tracer_provider=tracer_provider
    )
    try:
        yield Otel(reader, spans, tracer_provider)
    finally:
        instrumentor.uninstrument()


def render_report() -> None:
    """The user's blocking line."""
    time.sleep(0.3)


async def handle_request(otel: Otel) -> None:
    """A request handler under its server span, as an instrumented server makes one."""
    tracer = otel.tracer_provider.get_tracer("server")
    with tracer.start_as_current_span("GET /report", kind=SpanKind.SERVER):
        await asyncio.sleep(0.02)
        render_report()
        await asyncio.sleep(0.2)  # the watchdog reports the stall's end meanwhile


async def serve_one(otel: Otel) -> None:
    # A task made while the loop runs, as a server makes one per request.
    await asyncio.create_task(handle_request(otel))


def test_a_blocking_call_in_a_request_is_one_stall_span_under_the_request(otel: Otel) -> None:
    started = time.time_ns()
    asyncio.run(serve_one(otel))
    [stall] = otel.stall_spans()
    [request] = [s for s in otel.spans.get_finished_spans() if s.name == "GET /report"]
    assert stall.parent is not None
    assert stall.parent.span_id == request.context.span_id
    assert stall.context.trace_id == request.context.trace_id
    # Back-dated: it began when the loop stopped, within the request, and lasted the block.
    assert stall.start_time is not None
    assert stall.end_time is not None
    assert request.start_time is not None
    assert request.end_time is not None
    assert request.start_time <= stall.start_time < stall.end_time <= request.end_time
    assert started < stall.start_time
    assert 0.25 < (stall.end_time - stall.start_time) / 1e9 < 1.0
    attributes = dict(stall.attributes or {})
    assert attributes["code.function.name"] == "render_report"
    assert attributes["code.file.path"] == __file__
    assert attributes["code.line.number"] == render_report.__code__.co_firstlineno + 2
    assert attributes["loopwatch.stall.cause"] == "wait"


def test_the_four_metrics_with_their_units_and_attributes(otel: Otel) -> None:
    asyncio.run(serve_one(otel))
    metrics = otel.metrics()
    assert {name: m.unit for name, m in metrics.items()} == {
        "asyncio.eventloop.delay": "s",
        "asyncio.eventloop.utilization": "1",
        "asyncio.eventloop.time": "s",
        "asyncio.eventloop.stall.duration": "s",
    }
    [delay] = metrics["asyncio.eventloop.delay"].data.data_points
    assert delay.count > 10  # the probe's samples, every 10 ms
    assert delay.max >= 0.25  # the one that waited out the block
    [stall] = metrics["asyncio.eventloop.stall.duration"].data.data_points
    assert dict(stall.attributes) == {"loopwatch.stall.cause": "wait"}
    assert stall.count == 1
    assert 0.25 < stall.sum < 1.0
    times = {
        p.attributes["asyncio.eventloop.state"]: p.value
        for p in metrics["asyncio.eventloop.time"].data.data_points
    }
    assert set(times) == {"active", "idle"}
    assert times["active"] >= 0.25  # the block
    assert times["idle"] >= 0.15  # the sleeps
    [utilization] = metrics["asyncio.eventloop.utilization"].data.data_points
    assert 0.2 < utilization.value < 1.0


def test_a_stall_in_a_worker_carries_the_worker(otel: Otel) -> None:
    async def main() -> None:
        async with loopwatch.watch(registry=CollectorRegistry()) as watcher:
            # A blocking strategy runs the call on the loop: its worker holds it.
            blocking = loopwatch.strategies.BlockingStrategy(watcher.occupant)
            await loopwatch.Offload(blocking, name="reports")(render_report)
            await asyncio.sleep(0.2)

    asyncio.run(main())
    points = otel.metrics()["asyncio.eventloop.stall.duration"].data.data_points
    assert [dict(p.attributes) for p in points] == [
        {"loopwatch.stall.cause": "wait", "loopwatch.worker": "reports"}
    ]
    [stall] = otel.stall_spans()
    assert dict(stall.attributes or {})["loopwatch.worker"] == "reports"


def test_uvloops_loop_is_watched_too(otel: Otel) -> None:
    uvloop.run(serve_one(otel))
    [stall] = otel.stall_spans()
    assert dict(stall.attributes or {})["code.function.name"] == "render_report"
    assert stall.parent is not None  # uvloop's tasks are made by the task factory too


def test_an_application_watcher_reports_to_both_and_the_loop_is_watched_once(
    otel: Otel,
) -> None:
    registry = CollectorRegistry()

    async def main() -> None:
        async with loopwatch.watch(registry=registry):
            await serve_one(otel)

    asyncio.run(main())
    assert len(otel.stall_spans()) == 1  # not one per watcher
    assert registry_value(registry, "loopwatch_event_loop_stalls_total") == 1
    [point] = otel.metrics()["asyncio.eventloop.stall.duration"].data.data_points
    assert point.count == 1


def test_uninstrument_stops_it_all(otel: Otel) -> None:
    LoopwatchInstrumentor().uninstrument()
    run_forever = asyncio.BaseEventLoop.run_forever
    assert not hasattr(run_forever, "__wrapped__")
    asyncio.run(serve_one(otel))
    assert otel.stall_spans() == []
    metrics = otel.metrics()
    for name in ("asyncio.eventloop.delay", "asyncio.eventloop.stall.duration"):
        assert name not in metrics or not metrics[name].data.data_points


def test_a_stall_reported_after_its_request_ended_is_still_under_it(otel: Otel) -> None:
    """The span is emitted at the stall's end: by then the request may be over."""
    tracer = otel.tracer_provider.get_tracer("server")

    async def handle() -> None:
        with tracer.start_as_current_span("GET /quick", kind=SpanKind.SERVER):
            render_report()  # the request ends as soon as the block does

    async def main() -> None:
        await asyncio.create_task(handle())
        await asyncio.sleep(0.2)

    asyncio.run(main())
    [stall] = otel.stall_spans()
    [request] = [s for s in otel.spans.get_finished_spans() if s.name == "GET /quick"]
    assert stall.parent is not None
    assert stall.parent.span_id == request.context.span_id


def crunch() -> None:
    """The user's computing line."""
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:
        pass


def test_every_other_culprit_of_a_stall_is_an_event_of_its_span(otel: Otel) -> None:
    """Two callbacks due together, one computing, one sleeping: one stall, two culprits."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.call_soon(crunch)
        loop.call_soon(render_report)
        await asyncio.sleep(0.8)

    asyncio.run(main())
    [stall] = otel.stall_spans()
    # A sample straddling the two may add a stretch: each piece is an event.
    pieces = [dict(stall.attributes or {})] + [dict(e.attributes or {}) for e in stall.events]
    assert stall.events
    assert {e.name for e in stall.events} == {"loopwatch.stall.culprit"}
    assert {p["code.function.name"] for p in pieces} == {"crunch", "render_report"}
    # Beside other processes the loop may also have waited for a CPU: starved, a piece too.
    assert (
        {"cpu", "wait"}
        <= {p["loopwatch.stall.cause"] for p in pieces}
        <= {"cpu", "wait", "starved"}
    )
