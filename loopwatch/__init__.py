"""loopwatch: watch any asyncio loop, name what blocks it and why, and run sync code off it."""

import importlib
import sys
from typing import TYPE_CHECKING, Any

if sys.platform != "linux":  # pragma: no cover - the tests run where loopwatch runs
    # Said now, in one line, rather than as an AttributeError deep in a watchdog thread.
    raise ImportError(
        f"loopwatch runs on Linux only (it reads /proc and uses fcntl and pidfd_open); "
        f"this is {sys.platform}"
    )

from loopwatch.errors import (
    CallTimeoutError,
    LoopwatchError,
    MissingExtraError,
    SchedulerUnavailableError,
    StrategyError,
    TargetError,
)

if TYPE_CHECKING:
    from loopwatch.frames import user_code
    from loopwatch.metrics import WatchMetrics
    from loopwatch.occupant import Occupant
    from loopwatch.offload import Offload, run_sync, set_default_threads
    from loopwatch.stall import Culprit, StallEvent
    from loopwatch.strategies import (
        STRATEGIES,
        STRATEGY_NAMES,
        BlockingStrategy,
        Call,
        CooperativeStrategy,
        DaskStrategy,
        ExecutorStrategy,
        PoolGauges,
        PoolStrategy,
        ProcessStrategy,
        Strategy,
        ThreadStrategy,
        build_strategy,
    )
    from loopwatch.threadpool import ThreadPool
    from loopwatch.utilization import new_event_loop
    from loopwatch.watcher import Watcher, watch

# Everything but the errors is imported when first used: the pytest plugin is loaded
# by every pytest run where loopwatch is installed, and watching alone (``--loopwatch``,
# a service that only watches) does not need the offload half (the pools).
_LAZY = {
    "user_code": "loopwatch.frames",
    "WatchMetrics": "loopwatch.metrics",
    "Occupant": "loopwatch.occupant",
    **dict.fromkeys(("Culprit", "StallEvent"), "loopwatch.stall"),
    "new_event_loop": "loopwatch.utilization",
    **dict.fromkeys(("Watcher", "watch"), "loopwatch.watcher"),
    **dict.fromkeys(("Offload", "run_sync", "set_default_threads"), "loopwatch.offload"),
    "ThreadPool": "loopwatch.threadpool",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return _version()
    # The rest of ``__all__`` is the strategy family's.
    module = _LAZY.get(name, "loopwatch.strategies" if name in __all__ else None)
    if module is None:
        raise AttributeError(f"module 'loopwatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 - 20 ms

    try:
        return version("loopwatch")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


__all__ = [
    "STRATEGIES",
    "STRATEGY_NAMES",
    "AutoStrategy",
    "BlockingStrategy",
    "Call",
    "CallTimeoutError",
    "CooperativeStrategy",
    "Culprit",
    "DaskStrategy",
    "ExecutorStrategy",
    "LoopwatchError",
    "MissingExtraError",
    "Occupant",
    "Offload",
    "PoolGauges",
    "PoolStrategy",
    "ProcessStrategy",
    "SchedulerUnavailableError",
    "StallEvent",
    "Strategy",
    "StrategyError",
    "TargetError",
    "ThreadPool",
    "ThreadStrategy",
    "WatchMetrics",
    "Watcher",
    "__version__",
    "build_strategy",
    "new_event_loop",
    "run_sync",
    "set_default_threads",
    "user_code",
    "watch",
]
