"""deploy/: systemd unit checks, promtool rule tests, the generated dashboard."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from tests.daemon_process import ROOT
from tests.helpers import require_tool

DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd/loopwatch.service"


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    """Every alert fires on its pattern and stays quiet on a healthy series."""
    promtool = require_tool("promtool")
    tests = DEPLOY / "prometheus/tests/loopwatch.test.yml"
    result = subprocess.run(
        [promtool, "test", "rules", str(tests)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = set(
        re.findall(r"- alert: (\w+)", (DEPLOY / "prometheus/rules/loopwatch.rules.yml").read_text())
    )
    tested = set(re.findall(r"alertname: (\w+)", tests.read_text()))
    assert alerts == tested
    assert len(alerts) == 8


def test_prometheus_config_and_rules_are_valid() -> None:
    """promtool accepts the scrape config (and the rule file it names)."""
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus/prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_unit_verifies_with_only_the_exec_path_missing() -> None:
    """``systemd-analyze verify`` complains about nothing but the not-yet-installed ExecStart."""
    analyze = require_tool("systemd-analyze")
    result = subprocess.run(
        [analyze, "verify", str(UNIT)], capture_output=True, text=True, check=False
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert all("/opt/loopwatch/.venv/bin/loopwatch" in line for line in lines), lines


def test_unit_is_hardened() -> None:
    """``systemd-analyze security --offline=true`` scores at most 2.0; the contract keys are set."""
    analyze = require_tool("systemd-analyze")
    result = subprocess.run(
        [analyze, "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for loopwatch.service: ([\d.]+)", result.stdout)
    assert found is not None, result.stdout
    score = float(found.group(1))
    assert score <= 2.0
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillMode=mixed",
        "RestartPreventExitStatus=78",
        "LimitNOFILE=",
        "TasksMax=",
        "MemoryMax=",
    ):
        assert line in text
    # ProcSubset=pid hides /proc/stat and /proc/meminfo: process metrics go empty and
    # `import distributed` fails. Hardened without it.
    assert not re.search(r"^ProcSubset=pid", text, re.MULTILINE)
    stop_match = re.search(r"TimeoutStopSec=(\d+)", text)
    assert stop_match is not None
    stop = int(stop_match.group(1))
    assert stop > 10 + 1  # above the default shutdown.timeout plus the pool kill grace


def test_committed_dashboard_is_what_the_generator_makes() -> None:
    """Regenerate the dashboard: the committed JSON must be identical."""
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "grafana/generate.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    committed = (DEPLOY / "grafana/dashboards/loopwatch.json").read_text()
    assert result.stdout == committed, "run `make dashboard` and commit the result"
    board = json.loads(committed)
    assert board["uid"] == "loopwatch-loop-lag"
    assert board["schemaVersion"] == 41
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "job", "instance"]
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert not any('job="loopwatch"' in e for e in exprs)  # the job is a variable
    assert not any("histogram_quantile(1.0" in e for e in exprs)  # a bucket bound, not a max
    titles = [p["title"] for p in board["panels"]]
    assert "What blocks the loop (by worker and cause)" in titles
    types = {p["type"] for p in board["panels"]}
    assert {"heatmap", "timeseries", "stat", "table"} <= types
    refs = [t["refId"] for p in board["panels"] for t in p.get("targets", [])]
    assert all(refs)


def test_dashboard_lists_services_that_embed_the_library() -> None:
    """The job and instance pickers read a series every watched loop exports, not the daemon's."""
    from prometheus_client import CollectorRegistry, generate_latest

    from loopwatch.metrics import WatchMetrics

    registry = CollectorRegistry()
    WatchMetrics.on(registry)
    exported = generate_latest(registry).decode()
    board = json.loads((DEPLOY / "grafana/dashboards/loopwatch.json").read_text())
    for variable in board["templating"]["list"][1:]:
        [series] = re.findall(r"label_values\((\w+)", variable["query"])
        assert re.search(rf"^{series}[{{ ]", exported, re.MULTILINE), variable["query"]


def test_the_units_watchdog_leaves_time_for_the_native_dump() -> None:
    """systemd must not kill a stuck service before its stall line from the dump is out."""
    from loopwatch.daemon.config import ProbeConfig

    [watchdog] = re.findall(r"^WatchdogSec=(\d+)$", UNIT.read_text(), re.MULTILINE)
    dump_after = ProbeConfig().dump_after
    reader_delay = dump_after / 2 + 1.0  # the re-arm period and the reader's own second
    assert dump_after + reader_delay < int(watchdog)
