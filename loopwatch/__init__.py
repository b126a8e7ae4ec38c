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

# Each public name, once, with the module it lives in: ``__all__`` and the lazy loading
# are derived from this table. Everything is imported when first used: the pytest plugin
# is loaded by every pytest run where loopwatch is installed, and watching alone
# (``--loopwatch``, a service that only watches) does not need the offload half.
_PUBLIC: dict[str, tuple[str, ...]] = {
    "loopwatch.errors": (
        "CallTimeoutError",
        "LoopwatchError",
        "MissingExtraError",
        "SchedulerUnavailableError",
        "StrategyError",
        "TargetError",
    ),
    "loopwatch.frames": ("user_code",),
    "loopwatch.offload": ("Offload", "run_sync", "set_default_threads"),
    "loopwatch.stall": ("Culprit", "StallEvent"),
    "loopwatch.strategies": (
        "AutoStrategy",
        "BlockingStrategy",
        "Call",
        "CooperativeStrategy",
        "DaskStrategy",
        "ExecutorStrategy",
        "ProcessStrategy",
        "Strategy",
        "ThreadStrategy",
    ),
    "loopwatch.threadpool": ("ThreadPool",),
    "loopwatch.utilization": ("new_event_loop",),
    "loopwatch.watcher": ("Watcher", "watch"),
}
_LAZY = {name: module for module, names in _PUBLIC.items() for name in names}
__all__ = [*_LAZY, "__version__"]  # noqa: PLE0604 - derived from the one table

if TYPE_CHECKING:
    # The same names for type checkers (tests/test_public_api.py keeps the two equal).
    from loopwatch.errors import (
        CallTimeoutError as CallTimeoutError,
    )
    from loopwatch.errors import (
        LoopwatchError as LoopwatchError,
    )
    from loopwatch.errors import (
        MissingExtraError as MissingExtraError,
    )
    from loopwatch.errors import (
        SchedulerUnavailableError as SchedulerUnavailableError,
    )
    from loopwatch.errors import (
        StrategyError as StrategyError,
    )
    from loopwatch.errors import (
        TargetError as TargetError,
    )
    from loopwatch.frames import user_code as user_code
    from loopwatch.offload import (
        Offload as Offload,
    )
    from loopwatch.offload import (
        run_sync as run_sync,
    )
    from loopwatch.offload import (
        set_default_threads as set_default_threads,
    )
    from loopwatch.stall import Culprit as Culprit
    from loopwatch.stall import StallEvent as StallEvent
    from loopwatch.strategies import (
        AutoStrategy as AutoStrategy,
    )
    from loopwatch.strategies import (
        BlockingStrategy as BlockingStrategy,
    )
    from loopwatch.strategies import (
        Call as Call,
    )
    from loopwatch.strategies import (
        CooperativeStrategy as CooperativeStrategy,
    )
    from loopwatch.strategies import (
        DaskStrategy as DaskStrategy,
    )
    from loopwatch.strategies import (
        ExecutorStrategy as ExecutorStrategy,
    )
    from loopwatch.strategies import (
        ProcessStrategy as ProcessStrategy,
    )
    from loopwatch.strategies import (
        Strategy as Strategy,
    )
    from loopwatch.strategies import (
        ThreadStrategy as ThreadStrategy,
    )
    from loopwatch.threadpool import ThreadPool as ThreadPool
    from loopwatch.utilization import new_event_loop as new_event_loop
    from loopwatch.watcher import Watcher as Watcher
    from loopwatch.watcher import watch as watch


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return _version()
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'loopwatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 - 20 ms

    try:
        return version("loopwatch")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"
