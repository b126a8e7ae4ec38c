"""Example custom executors for ``strategy = "executor"`` (the tutorial's "write your own").

``executor = "loopwatch.daemon.executors:daemon_thread_executor"`` in a worker's config.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class DaemonThreadExecutor(Executor):
    """Runs each call on a fresh daemon thread, at most ``max_workers`` at once.

    Unlike ThreadPoolExecutor, whose threads are joined at interpreter exit, a call
    that hangs forever here cannot keep the process alive: that is the trade for
    paying a thread start (~50 µs) per call.
    """

    def __init__(self, max_workers: int = 8) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1: {max_workers}")
        self._slots = threading.BoundedSemaphore(max_workers)
        self._lock = threading.Lock()
        self._shutdown = False
        self._threads: set[threading.Thread] = set()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Start ``fn(*args, **kwargs)`` on its own thread once a slot is free."""
        future: Future[T] = Future()
        thread = threading.Thread(
            target=self._run, args=(future, fn, args, kwargs), daemon=True, name="loopwatch-daemon"
        )
        # One lock section: a shutdown(wait=True) between the check and the add would
        # otherwise miss this thread.
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._threads.add(thread)
        thread.start()
        return future

    def _run(
        self, future: Future[Any], fn: Callable[..., Any], args: Any, kwargs: dict[str, Any]
    ) -> None:
        try:
            with self._slots:
                if not future.set_running_or_notify_cancel():
                    return
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:
                    future.set_exception(exc)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:  # noqa: ARG002
        """Refuse new calls; with ``wait``, join the running ones (queued ones always run)."""
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
        if wait:
            for thread in threads:
                thread.join()


def daemon_thread_executor(max_workers: int = 8) -> DaemonThreadExecutor:
    """Factory for ``executor = "loopwatch.daemon.executors:daemon_thread_executor"``."""
    return DaemonThreadExecutor(max_workers)
