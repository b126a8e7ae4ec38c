"""bench.png: the lag distribution of every strategy, per workload, on a log scale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FLOOR_S = 1e-5  # log scale: a lag of exactly 0 is drawn at 10 µs


def write_chart(rows: list[dict[str, Any]], path: Path) -> None:
    """One box plot panel per workload, one box per strategy, lag in ms."""
    import matplotlib as mpl  # noqa: PLC0415 - bench extra, imported only here

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4.5), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        mine = [r for r in rows if r["workload"] == workload]
        data = [[max(s, FLOOR_S) * 1000 for s in r["samples"]] or [FLOOR_S * 1000] for r in mine]
        ax.boxplot(data, whis=(1, 99), showfliers=True, flierprops={"markersize": 2})
        ax.set_xticks(
            range(1, len(mine) + 1), [r["strategy"].replace("-", "\n") for r in mine], fontsize=8
        )
        ax.set_yscale("log")
        ax.set_title(f"{workload}")
        ax.axhline(10, color="tab:red", linestyle="--", linewidth=0.8)
        ax.set_ylabel("event-loop lag (ms, log)")
    fig.suptitle("loopwatch bench: event-loop lag per strategy (whiskers p1-p99; red: 10 ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
