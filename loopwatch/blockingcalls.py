"""Calls known to block: which audit events they are, and the hooks where Python has none.

``sys.audit`` raises an event for a file opened, a DNS lookup, a socket connect, a
subprocess, ``time.sleep`` (3.13+), ``sqlite3.connect``. Before 3.13 ``time.sleep`` has
no event, and no version has one for an sqlite3 statement: ``Hooks`` wraps
``time.sleep`` and ``sqlite3.connect`` while a test runs. The wrappers are module-level
and inert when no test is watched: a test that monkeypatches ``time.sleep`` and restores
it after ours was taken out gets back a function that only forwards, never a chain of
wrappers holding old tests' findings.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol, SupportsIndex

from loopwatch import frames

# Audit events that mean "this call blocks the thread that makes it".
BLOCKING_EVENTS = frozenset(
    {
        "open",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
        "socket.connect",
        "http.client.connect",
        "http.client.send",
        "urllib.Request",
        "subprocess.Popen",
        "os.system",
        "os.posix_spawn",
        "os.fork",
        "time.sleep",
        "sqlite3.connect",
    }
)
STACK_DEPTH = 40
# Standard-library modules whose file reads are the runtime's own, not the user's call:
# formatting an error reads source lines (``logger.exception`` -> traceback -> linecache
# -> tokenize.open), and an import reads its module.
_RUNTIME_FILES = ("/linecache.py", "/traceback.py", "/tokenize.py", "/bdb.py", "/pdb.py")


def is_blocking(event: str, args: tuple[Any, ...]) -> bool:
    """False for the events that look blocking but are not (a non-blocking connect)."""
    if event == "socket.connect":
        sock = args[0] if args else None
        timeout = getattr(sock, "gettimeout", lambda: None)()
        return timeout != 0.0  # asyncio connects non-blocking sockets on the loop
    if event == "open":
        path = args[0] if args else None
        return not isinstance(path, int)  # os.fdopen of a descriptor already open
    return True


def made_by_runtime(frame: FrameType | None) -> bool:
    """Whether a call is the runtime's, not the user's.

    An import, asyncio, an error's formatting (linecache, traceback), a debugger. Walks
    out from the call to the first frame of the user's code: the standard library in
    between may do anything on the user's behalf, but these are never the user's call.
    """
    depth = 0
    while frame is not None and depth < STACK_DEPTH:
        filename = frame.f_code.co_filename
        if filename.startswith("<frozen importlib") or "/importlib/" in filename:
            return True
        if "/asyncio/" in filename or filename.endswith(_RUNTIME_FILES):
            return True
        if frames.is_user_file(filename):
            return False
        frame = frame.f_back
        depth += 1
    return False


def describe(event: str, args: tuple[Any, ...]) -> str:
    """``open('/etc/hosts', 'r')``: the event with the arguments that say what it did."""
    shown = ", ".join(short(repr(a)) for a in _relevant(event, args))
    return f"{event}({shown})"


def _relevant(event: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    match event:
        case "open" | "socket.getaddrinfo":
            return args[:2]
        case (
            "socket.connect" | "http.client.connect" | "http.client.send" | "urllib.Request"
            | "subprocess.Popen"
        ):  # fmt: skip
            return args[1:2]
        case _:
            return args[:1]


def short(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Receiver(Protocol):
    """Who the hooks report to: the test being watched."""

    loop_ident: int

    def call(self, what: str, frame: FrameType | None) -> None:
        """A blocking call ``what`` made from ``frame``, on the loop's thread."""


class _State:
    receiver: Receiver | None = None
    real_sleep: Callable[[float | SupportsIndex], None] = time.sleep
    real_connect: Callable[..., Any] | None = None


def _sleep(seconds: float | SupportsIndex) -> None:
    receiver = _State.receiver
    if receiver is not None and threading.get_ident() == receiver.loop_ident:
        receiver.call(f"time.sleep({seconds!r})", sys._getframe(1))
    _State.real_sleep(seconds)


def _connect(*args: Any, **kwargs: Any) -> Any:
    real = _State.real_connect
    assert real is not None
    conn = real(*args, **kwargs)
    receiver = _State.receiver
    if receiver is not None:
        with contextlib.suppress(Exception):  # a factory's own class may refuse
            conn.set_trace_callback(_Statements(receiver))
    return conn


class _Statements:
    """sqlite3's trace callback: runs in the thread that executes the statement."""

    def __init__(self, receiver: Receiver) -> None:
        self._receiver = receiver

    def __call__(self, statement: str) -> None:
        receiver = self._receiver
        if receiver is _State.receiver and threading.get_ident() == receiver.loop_ident:
            receiver.call(f"sqlite3 query {short(statement)!r}", sys._getframe(1))


class Hooks:
    """The narrow hooks, installed while one test runs."""

    def __init__(self, receiver: Receiver) -> None:
        _State.receiver = receiver
        if sys.version_info < (3, 13) and time.sleep is not _sleep:
            _State.real_sleep = time.sleep
            time.sleep = _sleep
        sqlite3: Any = sys.modules.get("sqlite3")
        if sqlite3 is not None and sqlite3.connect is not _connect:
            _State.real_connect = sqlite3.connect
            sqlite3.connect = _connect

    def remove(self) -> None:
        """Put back what was replaced; a wrapper someone put over ours stays theirs."""
        _State.receiver = None
        restore()


def restore() -> None:
    """Put back ``time.sleep`` and ``sqlite3.connect`` where ours are installed.

    Also after a test's teardown: a monkeypatch undone then puts back our wrapper, which
    it had taken for the original.
    """
    if time.sleep is _sleep:
        time.sleep = _State.real_sleep
    sqlite3: Any = sys.modules.get("sqlite3")
    if sqlite3 is not None and sqlite3.connect is _connect:
        sqlite3.connect = _State.real_connect
