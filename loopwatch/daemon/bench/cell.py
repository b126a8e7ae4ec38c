"""One benchmark cell: a worker on one strategy, with the ticker and the probe running.

Run in a fresh interpreter per cell (``python -m loopwatch.daemon.bench.cell SPEC_JSON``) so that
no pool, thread or heap state leaks from one cell into the next.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict, dataclass, field
from time import perf_counter
from typing import Any

from prometheus_client import CollectorRegistry

from loopwatch.daemon.config import ExecutorsConfig, WorkerConfig
from loopwatch.daemon.metrics import Metrics
from loopwatch.daemon.strategy_set import StrategySet
from loopwatch.daemon.ticker import Ticker
from loopwatch.daemon.workers import Worker, strategy_key
from loopwatch.occupant import Occupant
from loopwatch.probe import LagProbe
from loopwatch.strategies import AutoStrategy, Call
from loopwatch.targets import resolve
from loopwatch.throttle import LogThrottle

TICK_INTERVAL_S = 0.5
MAX_KEPT_SAMPLES = 3000


@dataclass
class CellSpec:
    """What to run: a target on a strategy (with executor settings) for some seconds."""

    workload: str
    strategy: str
    target: str
    kwargs: dict[str, Any]
    seconds: float
    concurrency: int = 1
    variant: str = ""
    executors: dict[str, Any] = field(default_factory=dict)
    switch_interval: float = 0.001  # the daemon's default (Python's own is 0.005)


class _Recorder:
    """Keeps every lag sample (the histogram's buckets are too coarse for a table)."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def observe(self, amount: float) -> None:
        self.samples.append(amount)


class _MaxGauge:
    def __init__(self) -> None:
        self.max = 0.0

    def set(self, value: float) -> None:
        self.max = max(self.max, value)


def quantile(samples: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``samples``; 0 for none."""
    ordered = sorted(samples)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(spec: CellSpec) -> dict[str, Any]:
    """Run the cell and return its row (times in seconds)."""
    sys.setswitchinterval(spec.switch_interval)
    recorder, drift = _Recorder(), _MaxGauge()
    probe = LagProbe(recorder, 0.01, 0.1)
    ticker = Ticker(drift, TICK_INTERVAL_S)
    strategy_name = spec.strategy.split("-")[0]
    worker_cfg = WorkerConfig(
        name="bench",
        target=spec.target,
        kwargs=spec.kwargs,
        strategy=strategy_name,
        concurrency=spec.concurrency,
        timeout=600.0,
    )
    strategies = StrategySet(ExecutorsConfig.model_validate(spec.executors), Occupant())
    strategy = await strategies.get(strategy_key(worker_cfg))
    # Pools, caches (the generated JSON document) and imports warm up before the clock.
    warm_up = Call(resolve(spec.target), spec.kwargs, "bench")
    await asyncio.gather(*(strategy.call(warm_up, 600.0) for _ in range(spec.concurrency)))
    worker = Worker(worker_cfg, strategy, Metrics(CollectorRegistry()), LogThrottle(print, 60))
    probe.start(asyncio.get_running_loop())
    ticking = asyncio.create_task(ticker.run())
    started = perf_counter()
    worker.start()
    await asyncio.sleep(spec.seconds)
    done = worker.finished
    # Up to the last completed call: cutting the window mid-call would count a partial
    # call as zero and bias against every strategy that lets the clock run during a call.
    elapsed = (worker.last_finished_at if done else perf_counter()) - started
    ticking.cancel()
    probe.stop()
    await worker.stop(60.0)
    # "auto" (advising, never moving) ran it on a thread and measured it: the rule's choice.
    fit = strategy.fit("bench") if isinstance(strategy, AutoStrategy) else None
    await strategies.aclose(5.0)
    samples = recorder.samples
    kept = samples[:: max(1, len(samples) // MAX_KEPT_SAMPLES)]
    return {
        **{k: v for k, v in asdict(spec).items() if k in ("workload", "strategy", "variant")},
        "tasks": done,
        "seconds": round(elapsed, 3),
        "tasks_per_s": round(done / elapsed, 3),
        "lag_p50": quantile(samples, 0.5),
        "lag_p99": quantile(samples, 0.99),
        "lag_max": max(samples, default=0.0),
        "tick_drift_max": drift.max,
        "ticks": ticker.ticks,
        **({"fit": fit.strategy, "fit_reason": fit.reason} if fit is not None else {}),
        "samples": [round(s, 6) for s in kept],
    }


def main() -> None:
    """``python -m loopwatch.daemon.bench.cell SPEC_JSON``: print the row as JSON on stdout."""
    spec = CellSpec(**json.loads(sys.argv[1]))
    print(json.dumps(asyncio.run(measure(spec))))


if __name__ == "__main__":
    main()
