"""faulthandler's one timer per process (``dump_traceback_later``), and who holds it.

A ``NativeDump`` arms the timer only while it holds it: the first to ask gets it, and
another one (a second watched loop) goes without a native dump, saying so once. pytest's
``faulthandler_timeout`` keeps it from the plugin (``loopwatch.pytest_plugin``), and an
application that arms the timer itself passes ``dump_after=0``.

Fork: the timer is cancelled before a fork and armed again by its holder in the parent.
A child that inherited an armed timer would have faulthandler believe in a timer thread
that does not exist there, and hang at its first cancel or re-arm (a fork after
``watch()`` did). The child starts with no holder. Exit: the holder's ``close`` cancels
the timer and lets it go.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import threading
from typing import Any

from loopwatch.events import emit

log = logging.getLogger("loopwatch")

_lock = threading.Lock()
_holder: object | None = None
_armed: tuple[float, int] | None = None  # (seconds, fd) of the timer armed now
_said = False


def claim(owner: object) -> bool:
    """Whether ``owner`` holds the timer (it gets it when nobody does)."""
    global _holder, _said  # noqa: PLW0603 - the one timer is process-wide
    with _lock:
        if _holder is None:
            _holder = owner
        if _holder is owner:
            return True
        said, _said = _said, True
    if not said:
        emit(
            log,
            logging.INFO,
            "native_dump_unavailable",
            "another watcher holds faulthandler's timer: this one takes no native dump",
            reason="faulthandler has one timer per process",
        )
    return False


def arm(owner: object, seconds: float, fd: int) -> None:
    """Dump every thread's stack to ``fd`` in ``seconds`` unless armed again (the holder)."""
    global _armed  # noqa: PLW0603
    with _lock:
        if _holder is not owner:
            return
        faulthandler.dump_traceback_later(seconds, repeat=False, file=fd)
        _armed = (seconds, fd)


def cancel(owner: object, *, release: bool = False) -> None:
    """Cancel the holder's timer; with ``release``, let another one take it."""
    global _armed, _holder  # noqa: PLW0603
    with _lock:
        if _holder is not owner:
            return
        faulthandler.cancel_dump_traceback_later()
        _armed = None
        if release:
            _holder = None


def _before_fork() -> None:
    _lock.acquire()
    if _armed is not None:
        faulthandler.cancel_dump_traceback_later()


def _after_fork_in_parent() -> None:
    if _armed is not None:
        faulthandler.dump_traceback_later(_armed[0], repeat=False, file=_armed[1])
    _lock.release()


def _after_fork_in_child() -> None:
    global _lock, _holder, _armed, _said  # noqa: PLW0603 - a child starts afresh
    _lock = threading.Lock()
    _holder, _armed, _said = None, None, False


def holder() -> Any:
    """Who holds the timer now (for tests)."""
    return _holder


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
