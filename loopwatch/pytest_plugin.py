"""``pytest --loopwatch``: fail the async tests whose code blocks the event loop.

Two channels, one verdict given when the test has ended (never raised inside the
blocking call, where the loop's exception handler could swallow it):

1. the stall watchdog (``loopwatch.watch``) on the test's loop: a stall longer than the
   threshold, with its cause and the user's line, as in production;
2. calls known to block, made on the loop's thread, however fast they were on this
   machine: ``sys.audit`` events (file open, DNS, socket connect, HTTP, subprocess,
   ``time.sleep`` from 3.13, ``sqlite3.connect``), and, where Python raises no event,
   a narrow hook installed only while a test runs (``time.sleep`` before 3.13, sqlite3
   statements through the connection's trace callback).

Only coroutine tests are watched (pytest-asyncio's and anyio's): the test function is
wrapped, so the loop is watched from the test's first line to its last, and time while
no loop runs (sync fixtures, pytest itself) never counts. Off unless asked for:
``--loopwatch`` or ``loopwatch = true`` in the ini file. docs/testing.md has the policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import math
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, SupportsIndex

import pytest

from loopwatch.host import WatchdogHost

if TYPE_CHECKING:
    from loopwatch.stall import StallEvent
    from loopwatch.watcher import Watcher

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
# A stall this close to the threshold whose cause says "the machine, not the code" is a
# warning: a loaded CI host makes them (measured: one in five runs under 4 CPU hogs).
NOISE_CAUSES = frozenset({"starved", "unknown"})
NOISE_FACTOR = 2.0
DEFAULT_THRESHOLD = 0.1
NATIVE_DUMP_AFTER = 0.5
STACK_DEPTH = 40


class LoopwatchNoiseWarning(pytest.PytestWarning):
    """A stall near the threshold that the machine, not the test, probably caused."""


@dataclass
class Finding:
    """One thing that blocked the loop during a test."""

    kind: str  # "call" or "stall"
    what: str  # the call with its argument, or "stall (cause)"
    seconds: float | None
    culprit: str  # innermost line of the user's code
    test_line: str | None  # the test function's own line, when on the stack
    stack: list[str] = field(default_factory=list)
    noise: bool = False

    def line(self) -> str:
        """One line: what, how long, where."""
        took = "" if self.seconds is None else f" for {_duration(self.seconds)}"
        where = f" at {self.culprit}"
        if self.test_line and self.test_line != self.culprit:
            where += f" (test line {self.test_line})"
        return f"{self.what}{took}{where}"


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


# --- options ---------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--loopwatch``, ``--loopwatch-threshold``, ``--loopwatch-report`` and the ini keys."""
    group = parser.getgroup("loopwatch", "blocking calls on the event loop (loopwatch)")
    group.addoption(
        "--loopwatch",
        action="store_true",
        default=None,
        help="fail async tests whose code blocks the event loop",
    )
    group.addoption(
        "--loopwatch-threshold",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"a stall longer than this fails the test (default {DEFAULT_THRESHOLD})",
    )
    group.addoption(
        "--loopwatch-report",
        default=None,
        metavar="PATH",
        help="write every finding as JSON to PATH (for CI)",
    )
    parser.addini("loopwatch", "watch async tests for blocking calls", type="bool", default=False)
    parser.addini(
        "loopwatch_threshold", "stall threshold in seconds", default=str(DEFAULT_THRESHOLD)
    )
    parser.addini(
        "loopwatch_allow",
        "calls (time.sleep, open), modules (mypkg.db) or call sites (path/file.py:12) "
        "allowed to block",
        type="linelist",
        default=[],
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the mark; start the session's watching when asked for."""
    config.addinivalue_line(
        "markers",
        "loopwatch_allow(*entries): let this test block the loop with these calls, modules "
        "or call sites (no entry: anything)",
    )
    enabled = config.getoption("loopwatch")
    if enabled is None:
        enabled = config.getini("loopwatch")
    if not enabled:
        return
    threshold = config.getoption("loopwatch_threshold")
    if threshold is None:
        threshold = float(config.getini("loopwatch_threshold"))
    if not threshold > 0:
        raise pytest.UsageError(f"--loopwatch-threshold must be > 0 seconds, got {threshold}")
    session = Session(threshold, list(config.getini("loopwatch_allow")))
    # faulthandler has one timer per process: pytest's faulthandler_timeout keeps it.
    session.native_dump = not _faulthandler_timeout(config)
    config.stash[SESSION] = session
    _audit_into(session)


SESSION = pytest.StashKey["Session"]()
# An audit hook cannot be removed: one per process, handing events to the session of the
# pytest run going on (an in-process pytester run makes another), idle between runs.
_audited: list[Session] = []


def _audit_into(session: Session) -> None:
    if not _audited:
        sys.addaudithook(_audit)
    _audited[:] = [session]


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _audited:
        _audited[0].audit(event, args)


FINDINGS = pytest.StashKey[list[Finding]]()


# --- the session: one audit hook, one registry, the findings of every test --------------


class Session:
    """What ``--loopwatch`` keeps for the whole run."""

    def __init__(self, threshold: float, allow: list[str]) -> None:
        self.threshold = threshold
        self.allow = allow
        self.current: Watching | None = None
        self.watcher: Watcher | None = None
        # Name a native hold's line from faulthandler's dump (not when pytest's own
        # faulthandler_timeout has the process's one timer).
        self.native_dump = True
        # The watchdog's thread, parked between tests rather than started for each.
        self.host = WatchdogHost()
        self.blocked: dict[str, list[Finding]] = {}
        self.warned: dict[str, list[Finding]] = {}
        from prometheus_client import CollectorRegistry  # noqa: PLC0415 - only when enabled

        self.registry = CollectorRegistry()

    def stall(self, event: StallEvent) -> None:
        """The watcher's callback (its thread): to the test being watched."""
        watch = self.current
        if watch is not None:
            watch.stall(event)

    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        """The audit hook: cheap for every event, work only for a blocking one on the loop."""
        watch = self.current
        if watch is None or event not in BLOCKING_EVENTS:
            return
        if threading.get_ident() != watch.loop_ident:
            return
        try:
            watch.blocking_call(event, args)
        except Exception as exc:  # an audit hook's error would fail the user's call
            watch.failed(exc)


class Watching:
    """One test's watching: its loop, its findings."""

    def __init__(self, session: Session, test_code: Any, allowed: list[str] | None) -> None:
        self.session = session
        self.test_code = test_code
        self.allowed = allowed  # None: everything is allowed
        self.loop_ident = threading.get_ident()
        self.findings: list[Finding] = []
        self._lock = threading.Lock()
        self._in_hook = False
        self.errors: list[str] = []

    # -- channel 2: calls known to block --------------------------------------------------

    def blocking_call(self, event: str, args: tuple[Any, ...]) -> None:
        """An audit event of a blocking call, on the loop's thread."""
        if self._in_hook:
            return  # our own work (formatting a path) raised an event
        self._in_hook = True
        try:
            frame = sys._getframe(2)  # the code that made the call
            if not _blocking(event, args) or _from_import_or_asyncio(frame):
                return
            self.add(self._call_finding(_describe(event, args), frame))
        finally:
            self._in_hook = False

    def _call_finding(self, what: str, frame: FrameType | None) -> Finding:
        from loopwatch import frames  # noqa: PLC0415 - only when enabled

        stack = frames.frame_lines(frame, STACK_DEPTH)
        return Finding("call", what, None, frames.culprit_of(stack), self._test_line(frame), stack)

    def _test_line(self, frame: FrameType | None) -> str | None:
        while frame is not None:
            if frame.f_code is self.test_code:
                return f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}"
            frame = frame.f_back
        return None

    def failed(self, exc: Exception) -> None:
        """Our own bug must not break the test's call: noted, shown as a warning."""
        self.errors.append(f"{type(exc).__name__}: {exc}")

    def sqlite_statement(self, statement: str) -> None:
        """sqlite3's trace callback: runs in the thread that executes the statement."""
        if threading.get_ident() != self.loop_ident or self._in_hook:
            return
        frame = sys._getframe(1)
        self.add(self._call_finding(f"sqlite3 query {_short(statement)!r}", frame))

    # -- channel 1: stalls ----------------------------------------------------------------

    def stall(self, event: StallEvent) -> None:
        """The watchdog's callback (its own thread): final stall figures only."""
        if event.ongoing:
            return
        noise = (
            event.cause in NOISE_CAUSES and event.duration < self.session.threshold * NOISE_FACTOR
        )
        test_line = next(
            (line for line in event.stack if line.endswith(" " + self.test_code.co_name)
             and line.startswith(self.test_code.co_filename + ":")),
            None,
        )  # fmt: skip
        self.add(
            Finding(
                "stall",
                f"the loop was blocked ({event.cause})",
                event.duration,
                event.culprit,
                test_line,
                list(event.stack),
                noise=noise,
            )
        )

    def add(self, finding: Finding) -> None:
        """Keep ``finding`` unless an allow entry covers it (any thread)."""
        if self.allowed is None or _allowed(finding, self.allowed):
            return
        with self._lock:
            self.findings.append(finding)


def _blocking(event: str, args: tuple[Any, ...]) -> bool:
    """False for the events that look blocking but are not (a non-blocking connect)."""
    if event == "socket.connect":
        sock = args[0] if args else None
        timeout = getattr(sock, "gettimeout", lambda: None)()
        return timeout != 0.0  # asyncio connects non-blocking sockets on the loop
    if event == "open":
        path = args[0] if args else None
        return not isinstance(path, int)  # os.fdopen of a descriptor already open
    return True


def _from_import_or_asyncio(frame: FrameType | None) -> bool:
    """Whether the call is an import's, or asyncio's own (a subprocess transport).

    Walks out from the call to the first frame of the user's code: the standard library
    in between may do anything on the user's behalf, but an import, or asyncio, is never
    the user's blocking call.
    """
    from loopwatch import frames  # noqa: PLC0415

    depth = 0
    while frame is not None and depth < STACK_DEPTH:
        filename = frame.f_code.co_filename
        if filename.startswith("<frozen importlib") or "/importlib/" in filename:
            return True
        if "/asyncio/" in filename:
            return True
        if frames.is_user_file(filename):
            return False
        frame = frame.f_back
        depth += 1
    return False


def _describe(event: str, args: tuple[Any, ...]) -> str:
    shown = ", ".join(_short(repr(a)) for a in _relevant(event, args))
    return f"{event}({shown})"


def _relevant(event: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    match event:
        case "open":
            return args[:2]
        case "socket.connect":
            return args[1:2]
        case "http.client.connect" | "http.client.send" | "urllib.Request":
            return args[1:2]
        case "subprocess.Popen":
            return args[1:2]
        case "socket.getaddrinfo":
            return args[:2]
        case _:
            return args[:1]


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _allowed(finding: Finding, allow: list[str]) -> bool:
    """Whether an allow entry covers the finding: its call, a module or file, a call site."""
    for entry in allow:
        if finding.kind == "call" and finding.what.startswith(entry + "("):
            return True
        if finding.kind == "stall" and entry in ("stall", f"stall:{finding.what}"):
            return True
        if any(_site_matches(line, entry) for line in finding.stack):
            return True
    return False


def _site_matches(line: str, entry: str) -> bool:
    where = line.rpartition(" ")[0]  # file:line
    filename = where.rpartition(":")[0]
    if ":" in entry and entry.rpartition(":")[2].isdigit():
        return where.endswith(entry)  # a call site: path/file.py:12
    if entry.endswith(".py") or "/" in entry:
        return filename.endswith(entry)
    module_path = "/" + entry.replace(".", "/")
    return module_path + ".py" in filename or module_path + "/" in filename


# --- the test: wrapping its function, giving the verdict ---------------------------------


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Wrap a coroutine test so that its loop is watched while its body runs."""
    session = item.config.stash.get(SESSION, None)
    original = getattr(item, "obj", None)
    if session is None or not inspect.iscoroutinefunction(original):
        return (yield)
    assert original is not None
    allowed = _allowed_by_marks(item, session)
    findings: list[Finding] = []
    item.stash[FINDINGS] = findings
    item.obj = _watched(original, session, allowed, findings)  # type: ignore[attr-defined]
    try:
        return (yield)
    finally:
        item.obj = original  # type: ignore[attr-defined]


def _allowed_by_marks(item: pytest.Item, session: Session) -> list[str] | None:
    allowed = list(session.allow)
    for mark in item.iter_markers("loopwatch_allow"):
        if not mark.args:
            return None
        allowed.extend(str(a) for a in mark.args)
    return allowed


def _watched(
    original: Callable[..., Any],
    session: Session,
    allowed: list[str] | None,
    findings: list[Finding],
) -> Callable[..., Any]:
    code = inspect.unwrap(original).__code__

    @functools.wraps(original)
    async def watched(*args: Any, **kwargs: Any) -> Any:
        watch = Watching(session, code, allowed)
        watcher = _watcher(session)
        hooks = _Hooks(watch)
        session.current = watch
        # A shorter blind stall (native code held the GIL) is put on the test itself.
        watcher.occupant.last = ("", original, time.perf_counter(), math.inf)
        watcher.start(asyncio.get_running_loop())
        try:
            return await original(*args, **kwargs)
        finally:
            await _let_last_stall_show(watcher)
            watcher.stop()
            watcher.occupant.last = ("", None, 0.0, 0.0)
            session.current = None
            hooks.remove()
            findings.extend(watch.findings)

    return watched


def _watcher(session: Session) -> Watcher:
    """The session's one watcher: its watchdog thread is parked between tests, not ended."""
    if session.watcher is None:
        from loopwatch.watcher import Watcher  # noqa: PLC0415 - only when enabled

        threshold = session.threshold
        session.watcher = Watcher(
            registry=session.registry,
            resolution=min(0.01, threshold / 5),
            stall_threshold=threshold,
            # A C call holding the GIL on the loop (a regex, a parser) blinds every Python
            # thread: faulthandler's dump, from C, names the line.
            # A C call holding the GIL on the loop for over half a second (a regex, a parser)
            # blinds every Python thread: faulthandler's dump, from C, names its line.
            # Not sooner: a dump reads other threads' states without the GIL, and a test
            # suite's threads come and go (measured: a 0.1 s dump crashed one run in ten).
            dump_after=max(threshold, NATIVE_DUMP_AFTER) if session.native_dump else 0,
            on_stall=session.stall,
            log_stalls=False,  # the verdict reports them
            host=session.host,
        )
    return session.watcher


async def _let_last_stall_show(watcher: Watcher) -> None:
    """A block that ended the test has not been seen yet: let the loop beat once more."""
    probe = watcher.probe
    if time.perf_counter() - probe.last_beat < probe.stall_threshold_s:
        return  # the usual case: nothing to wait for
    stalls = watcher.stalls
    deadline = time.perf_counter() + 1.0
    while watcher.stalls == stalls and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(probe.resolution_s)  # the watchdog's thread counts them


class _Hooks:
    """The narrow hooks, installed only while one test runs."""

    def __init__(self, watch: Watching) -> None:
        self._sleep: Callable[[float | SupportsIndex], None] | None = None
        if sys.version_info < (3, 13):  # no time.sleep audit event before 3.13
            self._sleep = time.sleep
            real_sleep = time.sleep

            def sleep(seconds: float | SupportsIndex) -> None:
                if threading.get_ident() == watch.loop_ident:
                    watch.add(watch._call_finding(f"time.sleep({seconds!r})", sys._getframe(1)))
                real_sleep(seconds)

            time.sleep = sleep
        # No event for a statement: a connection made during the test reports, through
        # its trace callback, the statements it runs on the loop's thread.
        self._sqlite: Any = sys.modules.get("sqlite3")
        self._connect: Callable[..., Any] | None = None
        if self._sqlite is not None:
            self._connect = real_connect = self._sqlite.connect

            def connect(*args: Any, **kwargs: Any) -> Any:
                conn = real_connect(*args, **kwargs)
                with contextlib.suppress(Exception):  # a factory's own class may refuse
                    conn.set_trace_callback(watch.sqlite_statement)
                return conn

            setattr(self._sqlite, "connect", connect)  # noqa: B010 - a module, typed loosely

    def remove(self) -> None:
        """Put back what was replaced."""
        if self._sleep is not None:
            time.sleep = self._sleep
        if self._connect is not None:
            setattr(self._sqlite, "connect", self._connect)  # noqa: B010


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """The verdict: a test that passed but blocked the loop fails here, at its end."""
    report: pytest.TestReport = yield
    findings = item.stash.get(FINDINGS, None)
    if call.when != "call" or not findings:
        return report
    session = item.config.stash[SESSION]
    failing = [f for f in findings if not f.noise]
    noisy = [f for f in findings if f.noise]
    for finding in noisy:
        item.warn(
            LoopwatchNoiseWarning(f"near-threshold stall, probably the machine: {finding.line()}")
        )
    if noisy:
        session.warned[item.nodeid] = noisy
    if failing:
        session.blocked[item.nodeid] = failing
        if report.passed:
            report.outcome = "failed"
            report.longrepr = _message(failing)
    return report


def _message(findings: list[Finding]) -> str:
    lines = [f"loopwatch: this test blocked the event loop {len(findings)} time(s):"]
    lines.extend(f"  {finding.line()}" for finding in findings)
    first = findings[0]
    lines.append("")
    lines.append(f"stack of the first ({first.what}), innermost last:")
    lines.extend(f"  {line}" for line in first.stack[-15:])
    lines.append(
        "Move the call off the loop (await loopwatch.run_sync(fn, ...)), or allow it: "
        '@pytest.mark.loopwatch_allow("<call, module or file:line>").'
    )
    return "\n".join(lines)


# --- the end of the run -----------------------------------------------------------------


def pytest_unconfigure(config: pytest.Config) -> None:
    """End the session's watchdog thread."""
    watching = config.stash.get(SESSION, None)
    if watching is not None and watching.watcher is not None:
        watching.watcher.watchdog.close()
        watching.host.close()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the JSON report when asked for."""
    watching = session.config.stash.get(SESSION, None)
    path = session.config.getoption("loopwatch_report", None)
    if watching is None or not path:
        return
    report = {
        "threshold": watching.threshold,
        "blocked": {k: [asdict(f) for f in v] for k, v in watching.blocked.items()},
        "warnings": {k: [asdict(f) for f in v] for k, v in watching.warned.items()},
        "top_culprits": _top_culprits(watching),
    }
    Path(path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def _top_culprits(watching: Session) -> list[dict[str, object]]:
    counts = Counter(f.culprit for found in watching.blocked.values() for f in found)
    return [{"culprit": c, "tests": n} for c, n in counts.most_common(10)]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Which tests blocked the loop, and the lines that did it most."""
    watching = config.stash.get(SESSION, None)
    if watching is None:
        return
    write = terminalreporter.write_line
    terminalreporter.section("loopwatch: blocking calls on the event loop")
    if not watching.blocked:
        write(f"no test blocked the loop (threshold {watching.threshold} s)")
    for nodeid, found in watching.blocked.items():
        more = f" (+{len(found) - 1})" if len(found) > 1 else ""
        write(f"{nodeid}: {found[0].line()}{more}")
    if watching.blocked:
        write("top culprits:")
        for entry in _top_culprits(watching):
            write(f"  {entry['tests']} test(s)  {entry['culprit']}")
    if watching.warned:
        write(f"{len(watching.warned)} test(s) had near-threshold stalls the machine caused")


def _faulthandler_timeout(config: pytest.Config) -> float:
    """Pytest's ``faulthandler_timeout`` (0 when unset, or without its faulthandler plugin)."""
    if not config.pluginmanager.has_plugin("faulthandler"):
        return 0.0
    try:
        return float(config.getini("faulthandler_timeout") or 0)
    except (ValueError, KeyError):
        return 0.0
