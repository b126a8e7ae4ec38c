"""loopwatch: watch any asyncio loop, name what blocks it and why, and run sync code off it."""

import sys
from importlib.metadata import PackageNotFoundError, version

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
    StrategySettings,
    ThreadStrategy,
    build_strategy,
)
from loopwatch.threadpool import ThreadPool
from loopwatch.utilization import new_event_loop
from loopwatch.watcher import Watcher, watch

try:
    __version__ = version("loopwatch")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "STRATEGIES",
    "STRATEGY_NAMES",
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
    "StrategySettings",
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
