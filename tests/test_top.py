"""The arithmetic behind ``loopwatch top``: quantiles of an interval, rates, the sparkline."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from loopwatch.daemon.config import MetricsConfig
from loopwatch.daemon.top import (
    LAG,
    Scrape,
    View,
    delta_quantile,
    parse_samples,
    quantile,
    rate,
    sparkline,
    url_from_config,
)


def scrape_of(registry: CollectorRegistry, at: float) -> Scrape:
    return Scrape(at, parse_samples(generate_latest(registry).decode()))


def test_quantile_interpolates_within_a_bucket_as_prometheus_does() -> None:
    buckets = [(0.01, 50.0), (0.1, 100.0), (math.inf, 100.0)]
    assert quantile(buckets, 0.5) == pytest.approx(0.01)
    assert quantile(buckets, 0.75) == pytest.approx(0.055)
    assert quantile([(0.01, 0.0), (math.inf, 0.0)], 0.5) is None
    assert quantile([(0.01, 0.0), (math.inf, 4.0)], 0.99) == 0.01  # +Inf: the highest bound


def test_delta_quantile_and_rate_read_only_the_interval() -> None:
    """Old fast samples do not hide a slow interval: quantiles come from bucket deltas."""
    registry = CollectorRegistry()
    lag = Histogram(LAG, "lag", buckets=(0.001, 0.01, 0.1, 1.0), registry=registry)
    for _ in range(1000):
        lag.observe(0.0005)
    before = scrape_of(registry, at=10.0)
    for _ in range(10):
        lag.observe(0.5)
    after = scrape_of(registry, at=12.0)
    assert delta_quantile(before, after, LAG, 0.5) == pytest.approx(0.5)  # all in one bucket
    assert rate(before, after, LAG + "_count") == pytest.approx(5.0)
    view = View("http://x/metrics")
    view.add(before)
    view.add(after)
    assert list(view.lag_p99) == [pytest.approx(0.5)]


def test_calls_all_in_one_bucket_read_as_their_mean_not_the_bucket_top() -> None:
    """0.3 s calls in the (0.25, 0.5] bucket: "p99 call 497.5 ms" said linear interpolation."""
    registry = CollectorRegistry()
    name = "loopwatch_task_duration_seconds"
    calls = Histogram(name, "calls", buckets=(0.1, 0.25, 0.5, 1.0), registry=registry)
    calls.observe(0.01)
    before = scrape_of(registry, at=1.0)
    for _ in range(20):
        calls.observe(0.3)
    after = scrape_of(registry, at=2.0)
    assert delta_quantile(before, after, name, 0.99) == pytest.approx(0.3)
    calls.observe(0.05)  # spread over two buckets: Prometheus' interpolation again
    assert delta_quantile(before, scrape_of(registry, at=3.0), name, 0.99) == pytest.approx(
        0.25 + 0.25 * (0.99 * 21 - 1) / 20
    )


def test_a_restarted_endpoint_starts_a_new_interval() -> None:
    registry = CollectorRegistry()
    lag = Histogram(LAG, "lag", registry=registry)
    lag.observe(0.001)
    lag.observe(0.001)
    view = View("http://x/metrics")
    view.add(scrape_of(registry, at=1.0))
    fresh = CollectorRegistry()
    Histogram(LAG, "lag", registry=fresh).observe(0.001)
    view.add(scrape_of(fresh, at=2.0))
    assert view.prev is None
    assert not view.lag_p99


def test_sparkline_is_on_a_fixed_scale() -> None:
    assert sparkline([0.0, 0.0015, 0.003, 0.007, 0.02, 0.04, 0.07, 2.0]) == "▁▂▃▄▅▆▇█"


@pytest.mark.parametrize(
    ("cfg", "url"),
    [
        (MetricsConfig(), "http://127.0.0.1:9321/metrics"),
        (MetricsConfig(host="0.0.0.0", port=9400), "http://127.0.0.1:9400/metrics"),
        (MetricsConfig(host="::", port=9400), "http://[::1]:9400/metrics"),
        (MetricsConfig(tls_cert="c.pem", tls_key="k.pem"), "https://127.0.0.1:9321/metrics"),
    ],
)
def test_url_from_config_is_where_the_daemon_listens(cfg: MetricsConfig, url: str) -> None:
    assert url_from_config(cfg) == url


def test_an_endpoint_without_stalls_says_where_the_culprits_are() -> None:
    """A service's /metrics has no /stalls: the view says so rather than "no stall yet"."""
    from rich.console import Console

    registry = CollectorRegistry()
    Histogram(LAG, "lag", registry=registry).observe(0.001)
    view = View("http://x/metrics")
    view.add(scrape_of(registry, at=1.0))
    view.add(scrape_of(registry, at=2.0))
    console = Console(width=120, record=True)
    console.print(view.render())
    assert "see the `stall` lines of its log" in console.export_text()
    assert "no stall yet" not in console.export_text()


def test_an_auto_worker_shows_where_it_runs_now_and_why() -> None:
    """Its rates come from the strategy that runs it; the auto table gives the last reason."""
    from prometheus_client import Counter, Info
    from rich.console import Console

    registry = CollectorRegistry()
    Histogram(LAG, "lag", registry=registry).observe(0.001)
    Info("loopwatch_worker", "w", ["worker"], registry=registry).labels("billing-sync").info(
        {"strategy": "auto", "target": "m:f"}
    )
    tasks = Counter(
        "loopwatch_tasks", "t", ["worker", "strategy", "outcome"], registry=registry
    ).labels("billing-sync", "process", "ok")
    reason = "calls held the GIL for 64% of their wall time (88% of their CPU time)"
    decision = {"billing-sync": {"worker": "billing-sync", "strategy": "process", "switches": 1,
                                 "reason": reason + " \x1b]0;pwned\x07"}}  # fmt: skip
    view = View("http://x/metrics")
    view.add(Scrape(1.0, parse_samples(generate_latest(registry).decode()), [], decision))
    tasks.inc(30)
    view.add(Scrape(2.0, parse_samples(generate_latest(registry).decode()), [], decision))
    console = Console(width=80, record=True)
    console.print(view.render())
    text = console.export_text()
    assert "auto: process" in text
    assert "30.0" in text  # calls/s of the strategy running it, not of "auto"
    assert "billing-sync" in text
    assert "64% of their wall" in " ".join(text.split())
    assert "\x1b" not in text
