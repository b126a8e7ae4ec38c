"""Per-thread resources: a client made once per thread that runs calls, passed to the target.

A sqlite3 connection belongs to the thread that opened it; an HTTP session or a DB pool
should not be rebuilt per call. ``WithResource(fn, Resource(...))`` calls
``fn(resource, *args, **kwargs)``, where ``resource`` is what ``setup(**setup_kwargs)``
returned the first time that thread ran a call of this owner. It is picklable (the setup
is named by import path), so the same holds in process-pool children and Dask workers:
once per pool thread, process child or Dask worker thread, once on the loop for the
strategies that run there.

A resource with a ``close()`` method is closed in the thread that made it, never another
(sqlite3 refuses that):

- when the thread ends: a pool shut down, a process child exiting;
- when the thread next runs a call of a newer ``generation`` of the same owner (a worker
  that was replaced);
- by ``close_here(owner)`` in the calling thread (the loop, for on-loop strategies);
- by ``sweep_threads(pool, n, ...)``, which makes each of a thread pool's ``n`` threads
  close what it holds of owners that are gone.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from multiprocessing import util
from typing import Any

import structlog

from loopwatch import targets

log = structlog.get_logger("loopwatch")


@dataclass(frozen=True)
class Resource:
    """How to make an owner's per-thread resource: ``setup(**kwargs)``, named by import path."""

    owner: str
    setup: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    generation: int = 0


class _Held:
    """One thread's resources, by owner; closes them when the thread ends."""

    def __init__(self) -> None:
        self.by_owner: dict[str, tuple[int, Any]] = {}

    def close(self, owners: Collection[str] | None = None) -> None:
        for owner in list(self.by_owner if owners is None else owners):
            held = self.by_owner.pop(owner, None)
            if held is not None:
                _close(owner, held[1])

    def __del__(self) -> None:
        # Runs in the ending thread itself: CPython clears a thread's locals there.
        self.close()


_local = threading.local()
_child_finalizer: list[util.Finalize] = []


def _held() -> _Held:
    held: _Held | None = getattr(_local, "held", None)
    if held is None:
        held = _local.held = _Held()
        if multiprocessing.parent_process() is not None and not _child_finalizer:
            # A pool child leaves through os._exit: no thread teardown runs, but
            # multiprocessing's exit finalizers do, in the child's main thread.
            _child_finalizer.append(util.Finalize(None, held.close, exitpriority=10))
    return held


def _close(owner: str, value: Any) -> None:
    close = getattr(value, "close", None)
    if not callable(close):
        return
    try:
        close()
    except Exception as exc:  # a user's close() may raise anything: say so, go on
        log.warning("resource_close_failed", worker=owner, error=f"{type(exc).__name__}: {exc}")


def get(resource: Resource) -> Any:
    """The calling thread's resource of ``resource.owner``; made now if none of this generation."""
    held = _held()
    found = held.by_owner.get(resource.owner)
    if found is not None:
        if found[0] == resource.generation:
            return found[1]
        held.close([resource.owner])  # a replaced worker's, made by this thread
    value = targets.resolve(resource.setup)(**resource.kwargs)
    held.by_owner[resource.owner] = (resource.generation, value)
    return value


def close_here(owners: Collection[str] | None = None) -> None:
    """Close this thread's resources of ``owners`` (all when None)."""
    held: _Held | None = getattr(_local, "held", None)
    if held is not None:
        held.close(owners)


def sweep_threads(
    pool: concurrent.futures.ThreadPoolExecutor,
    threads: int,
    owners: Collection[str],
    timeout_s: float,
) -> int:
    """Make each of ``pool``'s ``threads`` threads close its resources of ``owners``.

    Blocking: call it off the loop. A barrier keeps each sweep on a thread of its own;
    threads still busy after ``timeout_s`` are left to close theirs when they end.
    Returns how many threads swept.
    """
    barrier = threading.Barrier(threads)

    def sweep() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout_s)
        close_here(owners)

    try:
        futures = [pool.submit(sweep) for _ in range(threads)]
    except RuntimeError:  # the pool is shut down: its threads closed theirs as they ended
        return 0
    done, _ = concurrent.futures.wait(futures, timeout=timeout_s + 1.0)
    return len(done)


class WithResource:
    """``fn`` called with this thread's resource first: ``fn(resource, *args, **kwargs)``."""

    __slots__ = ("__wrapped__", "resource")

    def __init__(self, fn: targets.Target, resource: Resource) -> None:
        self.__wrapped__ = fn  # what stall reports and kind checks look at
        self.resource = resource

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the target with this thread's resource."""
        return self.__wrapped__(get(self.resource), *args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (WithResource, (self.__wrapped__, self.resource))
