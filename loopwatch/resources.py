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
- by ``close_here(owners)`` in the calling thread: each pool thread of a worker that is
  gone, or the loop, for on-loop strategies (``close_here_within`` gives each close a
  deadline there).

A ``close()`` that never returns is named while it hangs: ``CLOSING`` holds, per thread,
the client being closed, so the strategy that asked can log it and carry on without it.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from multiprocessing import util
from typing import Any

from loopwatch import targets
from loopwatch.events import emit

log = logging.getLogger("loopwatch")


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
# Thread ident -> (worker, client type, since) of a close() running there now.
CLOSING: dict[int, tuple[str, str, float]] = {}


def _held() -> _Held:
    held: _Held | None = getattr(_local, "held", None)
    if held is None:
        held = _local.held = _Held()
        main = threading.current_thread() is threading.main_thread()
        if main and multiprocessing.parent_process() is not None and not _child_finalizer:
            # A pool child leaves through os._exit: no thread teardown runs, but
            # multiprocessing's exit finalizers do, in the child's main thread: so only
            # for the clients that thread made (a Dask worker's other threads keep theirs
            # to the end rather than have them closed by a thread that did not make them).
            _child_finalizer.append(util.Finalize(None, held.close, exitpriority=10))
    return held


def client_name(value: object) -> str:
    """A client's type as ``module.Class``, the way a log names it."""
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def _close(owner: str, value: Any) -> None:
    close = getattr(value, "close", None)
    if not callable(close):
        return
    ident = threading.get_ident()
    CLOSING[ident] = (owner, client_name(value), time.monotonic())
    try:
        close()
    except Exception as exc:  # a user's close() may raise anything: say so, go on
        error = f"{type(exc).__name__}: {exc}"
        emit(
            log,
            logging.WARNING,
            "resource_close_failed",
            f"{owner}: a client's close() failed: {error}",
            worker=owner,
            error=error,
        )
    finally:
        CLOSING.pop(ident, None)


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


class _Abandoned(BaseException):
    """Raised in the main thread when a client's close() passed its deadline."""


_armed = False  # a close() runs under the deadline now


def _abandon(_signum: int, _frame: object) -> None:
    if _armed:
        raise _Abandoned


def close_here_within(owners: Collection[str], timeout: float) -> None:
    """``close_here(owners)``, each close() given ``timeout`` seconds, in the main thread.

    For clients made on the loop, which must be closed there (sqlite3 insists) and must
    not hold it for good: a timer signal interrupts a close() past its deadline (one
    blocked in a wait, a sleep or on a socket), which is logged and left. Elsewhere than
    the main thread, where signals are not delivered, it is ``close_here``.
    """
    if threading.current_thread() is not threading.main_thread():
        close_here(owners)
        return
    held: _Held | None = getattr(_local, "held", None)
    if held is None:
        return
    previous = signal.signal(signal.SIGALRM, _abandon)
    try:
        for owner in [o for o in owners if o in held.by_owner]:
            _, value = held.by_owner.pop(owner)
            global _armed  # noqa: PLW0603 - read by the signal handler
            _armed = True
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                _close(owner, value)
                _armed = False
            except _Abandoned:
                _armed = False
                log_stuck(owner, client_name(value), threading.current_thread().name, timeout)
            finally:
                _armed = False
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)


def log_stuck(owner: str, client: str, thread: str, timeout: float) -> None:
    """Say that a client's close() did not return within ``timeout`` seconds."""
    emit(
        log,
        logging.WARNING,
        "resource_close_stuck",
        f"{owner}: {client}.close() in {thread} did not return within {timeout:g} s; left as it is",
        worker=owner,
        client=client,
        thread=thread,
        timeout=timeout,
        fix="the client is left as it is; see why its close() blocks (a dead server?)",
    )


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
