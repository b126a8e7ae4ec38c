"""``pytest --loopwatch``: fail the async tests whose code blocks the event loop.

Two channels, one verdict given when the test has ended (never raised inside the
blocking call, where the loop's exception handler could swallow it):

1. the stall watchdog on the test's loop (``loopwatch.testwatch``): a step of the loop
   longer than the threshold, with its cause and the user's line. Nothing is put on the
   loop: its selector's waits (asyncio) or its task steps (trio) are timed, so a
   virtual-time loop runs exactly as it would without the plugin;
2. calls known to block, made on the loop's thread, however fast they were on this
   machine (``loopwatch.blockingcalls``): audit events, and two narrow hooks where
   Python raises none.

Every coroutine test is watched, whatever runs it: pytest-asyncio, anyio (asyncio,
uvloop, trio), unittest's ``IsolatedAsyncioTestCase``. The test function is wrapped, so
the loop is watched from the test's first line to its last, and time while no loop runs
(sync fixtures, pytest itself) never counts. A coroutine test whose runner is not known
runs untouched and is counted "not watched". Under xdist each worker judges its tests
and the controller adds up the summary and the JSON report. Off unless asked for:
``--loopwatch`` or ``loopwatch = true`` in the ini file. docs/testing.md has the policy.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable, Generator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import pytest

from loopwatch import blockingcalls, findings, frames
from loopwatch.findings import Finding

if TYPE_CHECKING:
    from loopwatch.stall import StallEvent
    from loopwatch.testwatch import TestWatcher

DEFAULT_THRESHOLD = 0.1
NATIVE_DUMP_AFTER = 0.5
# What a test's report carries to the controller (xdist) and to the session's summary.
REPORT_KEY = "loopwatch"


class LoopwatchNoiseWarning(pytest.PytestWarning):
    """A stall the machine probably caused, or one with no line to show: not a failure."""


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
    parser.addini("loopwatch", "watch async tests for blocking calls", default="false")
    parser.addini(
        "loopwatch_threshold", "stall threshold in seconds", default=str(DEFAULT_THRESHOLD)
    )
    parser.addini(
        "loopwatch_allow",
        "calls (time.sleep, open), modules (mypkg.db), stack lines (path/file.py:12) or "
        "call sites (at:tests/*) allowed to block",
        type="linelist",
        default=[],
    )
    parser.addini(
        "loopwatch_native_dump",
        "name a line that holds the GIL from faulthandler's dump (its one timer)",
        default="true",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the mark; start the session's watching when asked for."""
    config.addinivalue_line(
        "markers",
        "loopwatch_allow(*entries): let this test block the loop with these calls, modules "
        "or call sites (no entry: anything)",
    )
    enabled = _ini_bool(config, "loopwatch")  # checked even when the option decides
    if config.getoption("loopwatch"):
        enabled = True
    if not enabled:
        return
    allow = list(config.getini("loopwatch_allow"))
    for entry in allow:
        if (problem := findings.check_entry(entry)) is not None:
            raise pytest.UsageError(f"loopwatch_allow in {_ini_name(config)}: {problem}")
    session = Session(_threshold(config), allow, str(config.rootpath))
    # faulthandler has one timer per process: pytest's faulthandler_timeout keeps it.
    timeout = _faulthandler_timeout(config)
    session.dump_off = (
        f"faulthandler_timeout = {timeout:g} has faulthandler's one timer"
        if timeout
        else None
        if _ini_bool(config, "loopwatch_native_dump")
        else "loopwatch_native_dump = false"
    )
    session.report_path = _report_path(config)
    session.worker = hasattr(config, "workerinput")  # an xdist worker: the controller reports
    config.stash[SESSION] = session
    config.pluginmanager.register(session, "loopwatch-session")
    _audit_into(session)


def _ini_name(config: pytest.Config) -> str:
    return str(config.inipath) if config.inipath else "the ini file"


def _ini_bool(config: pytest.Config, key: str) -> bool:
    raw = config.getini(key)
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise pytest.UsageError(f"{key} = {raw!r} in {_ini_name(config)}: expected true or false")


def _threshold(config: pytest.Config) -> float:
    """The threshold from the option, else the ini; a usage error naming its source."""
    raw = config.getoption("loopwatch_threshold")
    source = "--loopwatch-threshold"
    if raw is None:
        raw = config.getini("loopwatch_threshold")
        source = f"loopwatch_threshold in {_ini_name(config)}"
    try:
        value = float(raw)
    except ValueError:
        raise pytest.UsageError(f"{source}: {raw!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise pytest.UsageError(f"{source}: {raw!r} must be a finite number of seconds > 0")
    return value


def _report_path(config: pytest.Config) -> Path | None:
    """``--loopwatch-report``, checked now: a bad path is a usage error, not lost work."""
    raw = config.getoption("loopwatch_report", None)
    if not raw:
        return None
    path = Path(raw)
    folder = path.parent.resolve()
    if path.is_dir():
        raise pytest.UsageError(f"--loopwatch-report {raw}: is a folder, expected a file")
    if not folder.is_dir():
        raise pytest.UsageError(f"--loopwatch-report {raw}: no folder {folder}")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise pytest.UsageError(f"--loopwatch-report {raw}: not writable")
    return path


def _faulthandler_timeout(config: pytest.Config) -> float:
    """Pytest's ``faulthandler_timeout`` (0 when unset, or without its faulthandler plugin)."""
    if not config.pluginmanager.has_plugin("faulthandler"):
        return 0.0
    try:
        return float(config.getini("faulthandler_timeout") or 0)
    except (ValueError, KeyError):
        return 0.0


def pytest_report_header(config: pytest.Config) -> str | None:
    """The effective settings, on the run's first lines."""
    session = config.stash.get(SESSION, None)
    if session is None:
        return None
    allow = f"{len(session.allow)} allow entries" if session.allow else "no allow entries"
    dump = (
        f"native dump off ({session.dump_off})"
        if session.dump_off
        else f"native dump after {session.dump_after:g} s (faulthandler's one timer)"
    )
    return f"loopwatch: threshold {session.threshold:g} s, {allow}, {dump}"


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


# --- the session: one audit hook, one watcher, the findings of every test ---------------


class Session:
    """What ``--loopwatch`` keeps for the whole run."""

    def __init__(self, threshold: float, allow: list[str], rootdir: str = "") -> None:
        self.threshold = threshold
        self.allow = allow
        self.rootdir = rootdir
        self.current: Watching | None = None
        self.watcher: TestWatcher | None = None
        self.dump_off: str | None = None  # why there is no native dump, None: there is
        self.dump_after = max(threshold, NATIVE_DUMP_AFTER)
        self.report_path: Path | None = None
        self.worker = False
        # Added up from every test's report, the controller's under xdist.
        self.blocked: dict[str, list[Finding]] = {}
        self.warned: dict[str, list[Finding]] = {}
        self.not_watched: list[str] = []
        self.watched: set[str] = set()  # node ids: a test with subtests reports each part
        self.report_error: str | None = None

    def stall(self, event: StallEvent) -> None:
        """The watcher's callback (its thread): to the test being watched."""
        watch = self.current
        if watch is not None:
            watch.stall(event)

    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        """The audit hook: cheap for every event, work only for a blocking one on the loop."""
        watch = self.current
        if watch is None or event not in blockingcalls.BLOCKING_EVENTS:
            return
        if threading.get_ident() != watch.loop_ident:
            return
        try:
            watch.blocking_call(event, args)
        except Exception as exc:  # an audit hook's error would fail the user's call
            watch.failed(exc)

    def watcher_for_tests(self) -> TestWatcher:
        """The session's one watcher: its watchdog thread is parked between tests."""
        if self.watcher is None:
            from loopwatch.testwatch import TestWatcher  # noqa: PLC0415 - only when enabled

            # A C call holding the GIL on the loop for over half a second (a regex, a
            # parser) blinds every Python thread: faulthandler's dump, from C, names its
            # line. Not sooner: a dump reads other threads' states without the GIL, and a
            # suite's threads come and go (measured: a 0.1 s dump crashed one run in ten).
            self.watcher = TestWatcher(
                self.threshold, 0 if self.dump_off else self.dump_after, self.stall
            )
        return self.watcher

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Add up each test's findings: here, or at the controller from its workers.

        As junitxml does, from the reports: under xdist they are the workers', sent over.
        """
        data = getattr(report, REPORT_KEY, None)
        if report.when == "call" and isinstance(data, dict):
            self.add_report(report.nodeid, data)

    def add_report(self, nodeid: str, data: dict[str, Any]) -> None:
        """A test's findings, from its report (this process's, or a worker's)."""
        state = data.get("state")
        if state == "watched":
            self.watched.add(nodeid)
        elif state == "not watched" and nodeid not in self.not_watched:
            self.not_watched.append(nodeid)
        blocked = [Finding.from_dict(f) for f in data.get("blocked", [])]
        warned = [Finding.from_dict(f) for f in data.get("warned", [])]
        if blocked:  # each part of a test reports the test's findings: kept once
            self.blocked[nodeid] = blocked
        if warned:
            self.warned[nodeid] = warned


class Watching:
    """One test's watching: its loop's thread, its findings."""

    def __init__(
        self, session: Session, test_code: Any, allowed: list[str] | None, rootdir: str = ""
    ) -> None:
        self.session = session
        self.test_code = test_code
        self.allowed = allowed  # None: everything is allowed
        self.rootdir = rootdir
        self.loop_ident = threading.get_ident()
        self.findings: list[Finding] = []
        self._lock = threading.Lock()
        self._in_hook = False
        self.errors: list[str] = []

    # -- channel 2: calls known to block --------------------------------------------------

    def blocking_call(self, event: str, args: tuple[Any, ...]) -> None:
        """An audit event of a blocking call, on the loop's thread."""
        if blockingcalls.is_blocking(event, args):
            self.call(blockingcalls.describe(event, args), sys._getframe(3))

    def call(self, what: str, frame: FrameType | None) -> None:
        """A blocking call ``what`` made from ``frame`` (the loop's thread)."""
        if self._in_hook:
            return  # our own work (formatting a path) raised an event
        self._in_hook = True
        try:
            if blockingcalls.made_by_runtime(frame):
                return
            stack = frames.frame_lines(frame, blockingcalls.STACK_DEPTH)
            culprit = frames.culprit_of(stack)
            self.add(Finding("call", what, None, culprit, self._test_line(frame), stack))
        finally:
            self._in_hook = False

    def _test_line(self, frame: FrameType | None) -> str | None:
        while frame is not None:
            if frame.f_code is self.test_code:
                return f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}"
            frame = frame.f_back
        return None

    def failed(self, exc: Exception) -> None:
        """Our own bug must not break the test's call: noted, shown as a warning."""
        self.errors.append(f"{type(exc).__name__}: {exc}")

    # -- channel 1: stalls ----------------------------------------------------------------

    def stall(self, event: StallEvent) -> None:
        """The watchdog's callback (its own thread): final stall figures only."""
        if event.ongoing or findings.in_debugger(event.stack):
            return  # a debugger session held the loop, not the test
        noise = findings.is_noise(
            event.cause, event.duration, event.culprit, event.stack, self.session.threshold
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
        if self.allowed is None or findings.allowed(finding, self.allowed, self.rootdir):
            return
        with self._lock:
            self.findings.append(finding)


# --- the test: wrapping its function, giving the verdict ---------------------------------


class _TestState:
    """One test's watching as its report will carry it."""

    def __init__(self) -> None:
        self.watched = False
        self.findings: list[Finding] = []


STATE = pytest.StashKey[_TestState]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Wrap a coroutine test so that its loop is watched while its body runs."""
    session = item.config.stash.get(SESSION, None)
    original = getattr(item, "obj", None)
    if session is None or not inspect.iscoroutinefunction(original):
        return (yield)
    assert original is not None
    state = item.stash[STATE] = _TestState()
    watched = _watched(original, session, _allowed_by_marks(item, session), state)
    item.obj = watched  # type: ignore[attr-defined]
    # unittest calls the test method by its name on the instance, not pytest's ``obj``.
    instance = getattr(item, "instance", None) if _is_unittest(item) else None
    if instance is not None:
        setattr(instance, item.name, watched)
    try:
        return (yield)
    finally:
        item.obj = original  # type: ignore[attr-defined]
        if instance is not None and instance.__dict__.get(item.name) is watched:
            delattr(instance, item.name)


def _is_unittest(item: pytest.Item) -> bool:
    return type(item).__name__ == "TestCaseFunction" and hasattr(item, "_testcase")


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
    state: _TestState,
) -> Callable[..., Any]:
    code = inspect.unwrap(original).__code__

    @functools.wraps(original)
    async def watched(*args: Any, **kwargs: Any) -> Any:
        watcher = session.watcher_for_tests()
        if watcher.start(original) is None:
            return await original(*args, **kwargs)  # no loop we know: untouched
        state.watched = True
        watch = Watching(session, code, allowed, session.rootdir)
        hooks = blockingcalls.Hooks(watch)
        session.current = watch
        try:
            return await original(*args, **kwargs)
        finally:
            # A step that blocked at the test's end ends here: reported by ``stop``.
            watcher.stop()
            session.current = None
            hooks.remove()
            state.findings.extend(watch.findings)

    return watched


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    """Nothing of ours stays installed once the test's fixtures are torn down."""
    try:
        return (yield)
    finally:
        if STATE in item.stash:
            blockingcalls.restore()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """The verdict: a test that passed but blocked the loop fails here, at its end."""
    report: pytest.TestReport = yield
    state = item.stash.get(STATE, None)
    if call.when != "call" or state is None:
        return report
    failing = [f for f in state.findings if not f.noise]
    noisy = [f for f in state.findings if f.noise]
    for finding in noisy:
        warning = LoopwatchNoiseWarning(f"loopwatch: {_why_noise(finding)}: {finding.line()}")
        # ``filterwarnings = error`` (anyio's suite) raises it here, in a hook: that would
        # be an INTERNALERROR. It stays in the summary and the report.
        with contextlib.suppress(Warning):
            item.warn(warning)
    setattr(
        report,
        REPORT_KEY,
        {
            "state": "watched" if state.watched else "not watched",
            "blocked": [f.as_dict() for f in failing],
            "warned": [f.as_dict() for f in noisy],
        },
    )
    if failing and report.passed:
        report.outcome = "failed"
        report.longrepr = _message(failing)
    return report


def _why_noise(finding: Finding) -> str:
    if not finding.stack or finding.culprit == "unknown":
        return "a stall with no line to show"
    return "a near-threshold stall, probably the machine"


def _message(found: list[Finding]) -> str:
    lines = [f"loopwatch: this test blocked the event loop {len(found)} time(s):"]
    lines.extend(f"  {finding.line()}" for finding in found)
    first = found[0]
    lines.append("")
    lines.append(f"stack of the first ({first.what}), innermost last:")
    lines.extend(f"  {line}" for line in first.stack[-15:])
    lines.append(
        "Move the call off the loop (await loopwatch.run_sync(fn, ...)), or allow it: "
        '@pytest.mark.loopwatch_allow("<call, module, file:line or at:GLOB>").'
    )
    return "\n".join(lines)


# --- the end of the run -----------------------------------------------------------------


def pytest_unconfigure(config: pytest.Config) -> None:
    """End the session's watchdog thread."""
    session = config.stash.get(SESSION, None)
    if session is None:
        return
    config.pluginmanager.unregister(session)
    if session.watcher is not None:
        session.watcher.close()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the JSON report when asked for (not on an xdist worker: the controller does)."""
    watching = session.config.stash.get(SESSION, None)
    if watching is None or watching.report_path is None or watching.worker:
        return
    report = {
        "threshold": watching.threshold,
        "watched": len(watching.watched),
        "not_watched": watching.not_watched,
        "blocked": {k: [f.as_dict() for f in v] for k, v in watching.blocked.items()},
        "warnings": {k: [f.as_dict() for f in v] for k, v in watching.warned.items()},
        "top_culprits": _top_culprits(watching),
    }
    try:
        watching.report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        watching.report_error = f"--loopwatch-report {watching.report_path}: {exc.strerror}"


def _top_culprits(watching: Session) -> list[dict[str, object]]:
    counts = Counter(f.culprit for found in watching.blocked.values() for f in found)
    return [{"culprit": c, "tests": n} for c, n in counts.most_common(10)]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Which tests blocked the loop, the lines that did it most, and what was not watched."""
    watching = config.stash.get(SESSION, None)
    if watching is None or watching.worker:
        return
    write = terminalreporter.write_line
    terminalreporter.section("loopwatch: blocking calls on the event loop")
    threshold = f"threshold {watching.threshold:g} s"
    if not watching.blocked:
        tests = "no watched test" if watching.not_watched else "no test"
        write(f"{tests} blocked the loop ({len(watching.watched)} watched, {threshold})")
    for nodeid, found in watching.blocked.items():
        more = f" (+{len(found) - 1})" if len(found) > 1 else ""
        write(f"{nodeid}: {found[0].line()}{more}")
    if watching.blocked:
        write("top culprits:")
        for entry in _top_culprits(watching):
            write(f"  {entry['tests']} test(s)  {entry['culprit']}")
    if watching.warned:
        write(f"{len(watching.warned)} test(s) had stalls given as warnings, not failures")
    if watching.not_watched:
        write(
            f"{len(watching.not_watched)} async test(s) not watched (no asyncio or trio loop "
            f"ran them), e.g. {watching.not_watched[0]}",
            yellow=True,
        )
    if watching.report_error:
        write(watching.report_error, red=True)
