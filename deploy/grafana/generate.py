"""Generate the loopwatch Grafana dashboard with grafana-foundation-sdk (Grafana 11.6 build).

``make dashboard`` writes ``deploy/grafana/dashboards/loopwatch.json``; a test regenerates
it and fails when the committed file differs.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard, heatmap, stat, table, timeseries
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.builders.common import VizLegendOptions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

UID = "loopwatch-loop-lag"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'job=~"$job", instance=~"$instance"'
LAG = "loopwatch_event_loop_lag_seconds"


def query(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False) -> prom.Dataquery:
    """A Prometheus query with a stable ref id."""
    q = prom.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if legend:
        q = q.legend_format(legend)
    if instant:
        q = q.instant().format("table")
    return q


def legend() -> VizLegendOptions:
    """A table legend under the graph, with max and mean."""
    return (
        VizLegendOptions()
        .display_mode(LegendDisplayMode.TABLE)
        .placement(LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["max", "mean"])
    )


def series(
    title: str, unit: str, *targets: prom.Dataquery, description: str = ""
) -> timeseries.Panel:
    """A time series panel with the standard legend and size."""
    panel = (
        timeseries.Panel()
        .title(title)
        .unit(unit)
        .datasource(DS)
        .height(8)
        .span(12)
        .legend(legend())
    )
    if description:
        panel = panel.description(description)
    for target in targets:
        panel = panel.with_target(target)
    return panel


def lag_quantile(q: float) -> str:
    """A quantile of the loop lag over the selected instances."""
    return f"histogram_quantile({q}, sum by (le) (rate({LAG}_bucket{{{SEL}}}[$__rate_interval])))"


def build() -> dashboard.Dashboard:
    """The dashboard: loop lag first, then stalls, ticks, workers, process, reloads."""
    return (
        dashboard.Dashboard("loopwatch: event loop lag")
        .uid(UID)
        .tags(["loopwatch", "asyncio", "generated"])
        .description(
            "Is the asyncio event loop free? Lag, stalls, ticks and the workers that cause them."
        )
        .refresh("10s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
        )
        .with_variable(
            dashboard.QueryVariable("job")
            .label("job")
            .datasource(DS)
            .query("label_values(loopwatch_event_loop_lag_seconds_count, job)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .current(VariableOption(selected=True, text="All", value="$__all"))
        )
        .with_variable(
            dashboard.QueryVariable("instance")
            .label("instance")
            .datasource(DS)
            .query('label_values(loopwatch_event_loop_lag_seconds_count{job=~"$job"}, instance)')
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .current(VariableOption(selected=True, text="All", value="$__all"))
        )
        .with_row(dashboard.Row("Event loop"))
        .with_panel(
            heatmap.Panel()
            .title("Loop lag distribution")
            .description("Lag probe samples per histogram bucket: where the loop's lateness lives.")
            .datasource(DS)
            .height(8)
            .span(12)
            .with_target(
                query(
                    "sum by (le) (increase(" + LAG + "_bucket{" + SEL + "}[$__rate_interval]))",
                    "{{le}}",
                ).format("heatmap")
            )
        )
        .with_panel(
            series(
                "Loop lag p50 / p99",
                "s",
                query(lag_quantile(0.5), "p50", "A"),
                query(lag_quantile(0.99), "p99", "B"),
                description="Quantiles from the lag histogram. No 'max': a histogram only knows the bucket bound, not the longest sample; the stall log and the stall gauge give exact lengths.",
            )
        )
        .with_panel(
            stat.Panel()
            .title("Stall in progress")
            .description("Length of the stall happening right now (0 when the loop is responsive).")
            .unit("s")
            .datasource(DS)
            .height(6)
            .span(6)
            .with_target(query("max(loopwatch_event_loop_stall_seconds{" + SEL + "})", "stall"))
        )
        .with_panel(
            series(
                "Fraction of time the loop was late",
                "percentunit",
                query(
                    "sum by (instance) (rate(" + LAG + "_sum{" + SEL + "}[$__rate_interval]))",
                    "{{instance}}",
                ),
                description="rate(lag_sum): the histogram's sum is time-weighted, so this is the share of time callbacks waited.",
            )
            .span(6)
            .height(6)
        )
        .with_panel(
            series(
                "Stalls per minute",
                "short",
                query(
                    "sum by (instance) (rate(loopwatch_event_loop_stalls_total{"
                    + SEL
                    + "}[$__rate_interval])) * 60",
                    "{{instance}}",
                ),
            )
            .span(6)
            .height(6)
        )
        .with_panel(
            series(
                "Loop utilization",
                "percentunit",
                query(
                    "max by (instance) (rate(loopwatch_event_loop_busy_seconds_total{"
                    + SEL
                    + "}[$__rate_interval]))",
                    "{{instance}}",
                ),
                description="Share of time the loop ran callbacks, outside its selector wait (Node's event-loop utilization). Near 1 it has no room left. Not available under uvloop.",
            )
            .span(12)
            .height(6)
        )
        .with_panel(
            series(
                "What blocks the loop (by worker and cause)",
                "percentunit",
                query(
                    "sum by (worker, cause) (rate(loopwatch_event_loop_blocked_seconds_total{"
                    + SEL
                    + "}[$__rate_interval]))",
                    "{{worker}} {{cause}}",
                ),
                description="Stall seconds per second, split by the worker the watchdog blamed (empty: outside any worker) and the cause: cpu, wait, gil, gc, starved, unknown. The runbook says what to do about each.",
            )
            .span(12)
            .height(7)
        )
        .with_panel(
            series(
                "Tick drift",
                "s",
                query(
                    "max by (instance) (loopwatch_tick_drift_seconds{" + SEL + "})", "{{instance}}"
                ),
                description="How late the 1 s ticker came: the tutorial's detector.",
            )
            .span(6)
            .height(6)
        )
        .with_row(dashboard.Row("Workers"))
        .with_panel(
            series(
                "Calls per second by worker, strategy, outcome",
                "reqps",
                query(
                    "sum by (worker, strategy, outcome) (rate(loopwatch_tasks_total{"
                    + SEL
                    + "}[$__rate_interval]))",
                    "{{worker}} {{strategy}} {{outcome}}",
                ),
            )
        )
        .with_panel(
            series(
                "Call duration p99 by worker",
                "s",
                query(
                    "histogram_quantile(0.99, sum by (worker, strategy, le) (rate(loopwatch_task_duration_seconds_bucket{"
                    + SEL
                    + "}[$__rate_interval])))",
                    "{{worker}} ({{strategy}})",
                ),
            )
        )
        .with_panel(
            series(
                "Pool saturation: busy / capacity, queued",
                "short",
                query(
                    "sum by (executor) (loopwatch_executor_busy{" + SEL + "}) / "
                    "sum by (executor) (loopwatch_executor_workers{" + SEL + "})",
                    "{{executor}} busy share",
                    "A",
                ),
                query(
                    "sum by (executor) (loopwatch_executor_queued{" + SEL + "})",
                    "{{executor}} queued",
                    "B",
                ),
                description="Busy share 1 means every slot of the pool is taken; queued calls then wait.",
            )
        )
        .with_panel(
            series(
                "Queue wait p50 / p99 by worker",
                "s",
                query(
                    "histogram_quantile(0.5, sum by (worker, strategy, le) (rate(loopwatch_task_queue_wait_seconds_bucket{"
                    + SEL
                    + "}[$__rate_interval])))",
                    "{{worker}} p50",
                    "A",
                ),
                query(
                    "histogram_quantile(0.99, sum by (worker, strategy, le) (rate(loopwatch_task_queue_wait_seconds_bucket{"
                    + SEL
                    + "}[$__rate_interval])))",
                    "{{worker}} p99",
                    "B",
                ),
                description="From submit to start of a call in its pool.",
            )
        )
        .with_panel(
            series(
                "Calls in flight",
                "short",
                query("sum by (worker) (loopwatch_tasks_in_flight{" + SEL + "})", "{{worker}}"),
            )
        )
        .with_panel(
            table.Panel()
            .title("Worker strategies")
            .description("The current strategy and target of every worker (changes on reload).")
            .datasource(DS)
            .height(8)
            .span(12)
            .with_target(
                query(
                    "max by (instance, worker, strategy, target) (loopwatch_worker_info{"
                    + SEL
                    + "})",
                    instant=True,
                )
            )
        )
        .with_row(dashboard.Row("Process"))
        .with_panel(
            series(
                "CPU (cores)",
                "short",
                query(
                    "sum by (instance) (rate(process_cpu_seconds_total{"
                    + SEL
                    + "}[$__rate_interval]))",
                    "{{instance}}",
                ),
            ).span(8)
        )
        .with_panel(
            series(
                "Resident memory",
                "bytes",
                query(
                    "sum by (instance) (process_resident_memory_bytes{" + SEL + "})", "{{instance}}"
                ),
            ).span(8)
        )
        .with_panel(
            series(
                "Config reloads",
                "short",
                query(
                    "sum by (outcome) (increase(loopwatch_config_reloads_total{"
                    + SEL
                    + "}[$__rate_interval]))",
                    "{{outcome}}",
                ),
            ).span(8)
        )
    )


def render() -> str:
    """The dashboard as stable, sorted JSON."""
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


if __name__ == "__main__":
    print(render(), end="")
