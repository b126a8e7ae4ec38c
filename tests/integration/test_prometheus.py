"""A real Prometheus scrapes a live daemon: alerts and dashboard queries evaluate on its data."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_process import ROOT, DaemonProcess
from tests.helpers import StartDaemon, WriteConfig, free_port, require_tool
from tests.waiting import poll

pytestmark = pytest.mark.integration
RULES = ROOT / "deploy/prometheus/rules/loopwatch.rules.yml"
DASHBOARD = ROOT / "deploy/grafana/dashboards/loopwatch.json"


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_for(self, expr: str, timeout: float = 45.0) -> list[dict[str, Any]]:
        return poll(
            lambda: self.query(expr), timeout=timeout, interval=0.5, what=f"data for {expr}"
        )


@pytest.fixture
def daemon(write_config: WriteConfig, start_daemon: StartDaemon) -> DaemonProcess:
    config = write_config(
        """
[[workers]]
name = "stuck"
target = "tests.targets:block"
kwargs = { seconds = 0.3 }
strategy = "blocking"
interval = 0.1
[[workers]]
name = "io"
target = "loopwatch.daemon.workloads:blocking_io"
kwargs = { seconds = 0.05 }
strategy = "thread"
"""
    )
    process = start_daemon(config)
    process.wait_ready()
    return process


@pytest.fixture
def prometheus(tmp_path: Path, daemon: DaemonProcess) -> Iterator[Prometheus]:
    binary = require_tool("prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{RULES}"]
scrape_configs:
  - job_name: loopwatch
    static_configs:
      - targets: ["127.0.0.1:{daemon.port}"]
"""
    )
    proc = subprocess.Popen(
        [
            binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    prom = Prometheus(f"http://127.0.0.1:{port}")
    try:
        poll(prom.ready, timeout=30, interval=0.2, what="Prometheus ready", retry_on=(OSError,))
        yield prom
    finally:
        proc.terminate()
        proc.wait(20)


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def grafana_substitute(expr: str) -> str:
    """What Grafana sends: variables and interval macros replaced."""
    label_values = re.fullmatch(r"label_values\((.*), (\w+)\)", expr)
    if label_values:  # a variable query: Grafana asks for the series
        expr = label_values.group(1)
    return expr.replace("$instance", ".*").replace("$job", ".*").replace("$__rate_interval", "1m")


def test_alerts_and_dashboard_evaluate_on_live_data(
    prometheus: Prometheus, daemon: DaemonProcess
) -> None:
    """Every alert and dashboard expression evaluates; lag panels have data; the lag alert's condition holds."""
    prometheus.wait_for('up{job="loopwatch"} == 1')
    prometheus.wait_for(
        'count_over_time(loopwatch_event_loop_lag_seconds_count{job="loopwatch"}[1m]) >= 3'
    )
    rules = prometheus.api("rules")["groups"][0]["rules"]
    assert len(rules) == 8
    for rule in rules:
        prometheus.query(rule["query"])  # raises unless Prometheus accepts and evaluates it
        assert rule["health"] in ("ok", "unknown"), rule
    for expr in dashboard_exprs():
        prometheus.query(grafana_substitute(expr))
    lag_panels = [e for e in dashboard_exprs() if "loopwatch_event_loop_lag_seconds" in e]
    assert len(lag_panels) >= 4
    for expr in lag_panels:
        assert prometheus.wait_for(grafana_substitute(expr)), expr
    lag_alert = next(r for r in rules if r["name"] == "LoopwatchLoopLagHigh")
    firing_condition = prometheus.wait_for(lag_alert["query"])
    assert firing_condition[0]["metric"]["job"] == "loopwatch"
    assert float(firing_condition[0]["value"][1]) > 0.05
    table = prometheus.query(
        grafana_substitute(next(e for e in dashboard_exprs() if "worker_info" in e))
    )
    assert {(r["metric"]["worker"], r["metric"]["strategy"]) for r in table} == {
        ("stuck", "blocking"),
        ("io", "thread"),
    }
