"""``pytest --loopwatch``, run for real through pytester on real test files."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loopwatch.findings import Finding
from loopwatch.pytest_plugin import Session, Watching
from loopwatch.stall import StallEvent

pytest_plugins = ["pytester"]

CORPUS = Path(__file__).parent / "corpus"
INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
asyncio_default_test_loop_scope = function
"""


def corpus_lines() -> dict[str, int]:
    """Test name -> the line marked ``# BLOCKS`` in it (or in a function it defines)."""
    found: dict[str, int] = {}
    test = None
    for number, line in enumerate((CORPUS / "corpus_tests.py").read_text().splitlines(), 1):
        if match := re.match(r"async def (test_\w+)", line):
            test = match.group(1)
        if "# BLOCKS" in line and test is not None:
            found[test] = number
    return found


@pytest.mark.integration  # a pytest run in a subprocess
def test_the_corpus_blocking_tests_fail_naming_their_line_and_no_fine_one_does(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_corpus=(CORPUS / "corpus_tests.py").read_text())
    pytester.makepyfile(vendor_client=(CORPUS / "vendor_client.py").read_text())
    result = pytester.runpytest_subprocess(
        "--loopwatch", "--loopwatch-report=report.json", "-p", "no:cacheprovider", "-q"
    )
    report = json.loads((pytester.path / "report.json").read_text())
    blocked = {nodeid.split("::")[1]: findings for nodeid, findings in report["blocked"].items()}
    expected = corpus_lines()
    assert len(expected) >= 18
    assert set(blocked) == set(expected), result.stdout.str()
    for test, line in expected.items():
        where = f"test_corpus.py:{line} "
        assert any(
            where in f["culprit"] or where in (f["test_line"] or "") for f in blocked[test]
        ), (test, blocked[test])
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == len(expected)
    assert outcomes["passed"] >= 11  # every fine one, the sync one and the allowed one
    output = result.stdout.str()
    assert "loopwatch: blocking calls on the event loop" in output
    assert "top culprits:" in output


@pytest.mark.integration  # a pytest run in a subprocess
def test_a_failure_names_what_blocked_how_long_where_and_the_stack(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        test_one="""
        import time

        def slow_helper():
            time.sleep(0.25)

        async def test_slow():
            slow_helper()
        """
    )
    result = pytester.runpytest_subprocess("--loopwatch", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "loopwatch: this test blocked the event loop" in output
    assert re.search(
        r"time\.sleep\(0\.25\) at .*test_one\.py:4 slow_helper \(test line .*test_one\.py:7 test_slow\)",
        output,
    ), output
    assert re.search(
        r"the loop was blocked \(wait\) for 2\d\d\.\d ms at .*test_one\.py:4 slow_helper", output
    ), output
    assert "stack of the first" in output
    assert "loopwatch.run_sync" in output  # the fix is named


@pytest.mark.integration  # a pytest run in a subprocess
def test_off_unless_asked_and_on_from_the_ini(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one="import time\nasync def test_x():\n    time.sleep(0.01)\n")
    pytester.makeini(INI)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    pytester.makeini(INI + "loopwatch = true\n")
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(failed=1)


@pytest.mark.integration  # a pytest run in a subprocess
def test_the_ini_allow_list_and_the_mark_allow_calls_modules_and_sites(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI + "loopwatch = true\nloopwatch_allow =\n    fixtures_io\n")
    pytester.makepyfile(
        fixtures_io="import time\ndef load():\n    time.sleep(0.001)\n",
        test_allow="""
        import time
        import pytest
        import fixtures_io

        async def test_module_allowed_in_the_ini():
            fixtures_io.load()

        @pytest.mark.loopwatch_allow("test_allow.py:10")
        async def test_site_allowed():
            time.sleep(0.001)

        @pytest.mark.loopwatch_allow("time.sleep")
        async def test_call_allowed():
            time.sleep(0.001)

        @pytest.mark.loopwatch_allow("open")
        async def test_other_call_still_fails():
            time.sleep(0.001)
        """,
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=3, failed=1)
    assert "test_other_call_still_fails" in result.stdout.str()


@pytest.mark.integration  # a pytest run in a subprocess
def test_anyio_tests_are_watched_too(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(
        test_any="""
        import time
        import pytest

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        @pytest.mark.anyio
        async def test_blocks():
            time.sleep(0.001)

        @pytest.mark.anyio
        async def test_fine():
            import anyio
            await anyio.sleep(0.01)
        """
    )
    result = pytester.runpytest_subprocess(
        "--loopwatch", "-p", "no:asyncio", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1, failed=1)


@pytest.mark.integration  # a pytest run in a subprocess
def test_a_failing_test_keeps_its_own_failure(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        test_f="import time\nasync def test_x():\n    time.sleep(0.001)\n    assert 1 == 2\n"
    )
    result = pytester.runpytest_subprocess("--loopwatch", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    assert "assert 1 == 2" in result.stdout.str()


def stall_event(cause: str, duration: float) -> StallEvent:
    return StallEvent(
        duration=duration, cause=cause, culprit="/x/test_a.py:3 test_a", worker=None,  # type: ignore[arg-type]
        stack=("/x/test_a.py:3 test_a",), culprits=(), ongoing=False, loop_cpu=0.0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("cause", "duration", "noise"),
    [
        ("starved", 0.15, True),
        ("unknown", 0.19, True),
        ("starved", 0.25, False),
        ("cpu", 0.12, False),
    ],
)
def test_near_threshold_stalls_the_machine_caused_are_warnings(
    cause: str, duration: float, noise: bool
) -> None:
    def test_a() -> None: ...

    watch = Watching(Session(0.1, []), test_a.__code__, [])
    watch.stall(stall_event(cause, duration))
    [finding] = watch.findings
    assert isinstance(finding, Finding)
    assert finding.noise is noise


def test_a_stall_with_no_line_to_show_is_a_warning_however_long() -> None:
    """async-lru's case: "blocked (wait) for 103.7 ms at unknown", an empty stack."""

    def test_a() -> None: ...

    watch = Watching(Session(0.1, []), test_a.__code__, [])
    for stack, culprit in (((), "unknown"), (("/x/test_a.py:3 test_a",), "unknown")):
        event = stall_event("wait", 0.5)
        watch.stall(dataclasses.replace(event, stack=stack, culprit=culprit))
    assert [f.noise for f in watch.findings] == [True, True]


def test_a_stall_inside_a_debugger_is_no_finding() -> None:
    def test_a() -> None: ...

    watch = Watching(Session(0.1, []), test_a.__code__, [])
    stack = ("/x/test_a.py:3 test_a", "/usr/lib/python3.11/bdb.py:90 trace_dispatch",
             "/usr/lib/python3.11/pdb.py:350 interaction")  # fmt: skip
    watch.stall(dataclasses.replace(stall_event("wait", 5.0), stack=stack))
    assert watch.findings == []


@pytest.mark.integration  # a pytest run in a subprocess
def test_pytests_faulthandler_timeout_still_fires_with_the_plugin_on(
    pytester: pytest.Pytester,
) -> None:
    """faulthandler has one timer per process: with faulthandler_timeout set, it is pytest's."""
    pytester.makepyfile(
        test_two="import asyncio, time\n"
        "async def test_watched():\n    await asyncio.sleep(0)\n"
        "def test_hangs():\n    time.sleep(2.5)\n"
    )
    pytester.makeini(INI + "faulthandler_timeout = 1\n")
    result = pytester.runpytest_subprocess("--loopwatch", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert "Timeout (0:00:01)!" in result.stderr.str()


@pytest.mark.integration  # a fresh interpreter
def test_the_tests_watcher_imports_neither_prometheus_client_nor_structlog() -> None:
    """Most of the plugin's old cost on trivial tests was importing the production watcher."""
    code = (
        "import sys, asyncio, loopwatch.pytest_plugin as p\n"
        "s = p.Session(0.1, [])\n"
        "async def main():\n"
        "    w = s.watcher_for_tests()\n"
        "    assert w.start() == 'asyncio'\n"
        "    await asyncio.sleep(0.01)\n"
        "    w.stop()\n"
        "    w.close()\n"
        "asyncio.run(main())\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'prometheus_client', 'structlog', 'pydantic', 'rich'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stderr
