"""``pytest --loopwatch`` as other suites run it: every runner, xdist, pytest's own rules.

Each test runs a real pytest in a subprocess (pytester) on a small suite written the way
the projects of the issue write theirs: trio under anyio's plugin, aiostream's own
virtual-time loop, unittest's ``IsolatedAsyncioTestCase``, pytest-xdist.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.integration  # pytest runs in subprocesses

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
asyncio_default_test_loop_scope = function
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("--loopwatch", "-p", "no:cacheprovider", *args)


def report_of(pytester: pytest.Pytester, name: str = "report.json") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((pytester.path / name).read_text())
    return data


def test_trio_under_anyio_is_watched_a_blocking_test_fails_naming_its_line(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(
        test_trio="""
        import time
        import pytest
        import trio

        pytestmark = pytest.mark.anyio

        @pytest.fixture
        def anyio_backend():
            return "trio"

        async def test_sleeps():
            time.sleep(0.01)

        async def test_spins():
            end = time.perf_counter() + 0.3
            while time.perf_counter() < end:
                pass

        async def test_fine():
            await trio.sleep(0.01)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep, 0.01)
        """
    )
    result = run(pytester, "-p", "no:asyncio", "--loopwatch-report=report.json")
    result.assert_outcomes(passed=1, failed=2)
    blocked = report_of(pytester)["blocked"]
    assert isinstance(blocked, dict)
    [sleeps] = blocked["test_trio.py::test_sleeps"]
    assert sleeps["what"].startswith("time.sleep(")
    assert "test_trio.py:12 test_sleeps" in sleeps["culprit"]
    spins = blocked["test_trio.py::test_spins"]
    assert spins[0]["kind"] == "stall"
    assert spins[0]["seconds"] >= 0.25
    assert "test_trio.py:1" in spins[0]["culprit"]  # a line of the spinning loop
    assert "test_spins" in spins[0]["culprit"]
    assert "RuntimeError" not in result.stdout.str()


def test_uvloop_under_anyio_is_watched(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(
        test_uv="""
        import time
        import pytest

        pytestmark = pytest.mark.anyio

        @pytest.fixture
        def anyio_backend():
            return ("asyncio", {"use_uvloop": True})

        async def test_spins():
            end = time.perf_counter() + 0.3
            while time.perf_counter() < end:
                pass

        async def test_fine():
            import anyio
            await anyio.sleep(0.01)
        """
    )
    result = run(pytester, "-p", "no:asyncio")
    result.assert_outcomes(passed=1, failed=1)
    assert "the loop was blocked" in result.stdout.str()


def test_a_virtual_time_loop_runs_as_without_the_plugin(pytester: pytest.Pytester) -> None:
    """aiostream's test loop steps its clock from timer to timer: nothing of ours may be one."""
    pytester.makeini(INI)
    pytester.makeconftest(
        """
        from aiostream.test_utils import TimeTrackingTestLoop

        def pytest_asyncio_loop_factories():
            return {"custom": TimeTrackingTestLoop}
        """
    )
    pytester.makepyfile(
        test_virtual="""
        import asyncio

        async def test_the_clock_steps_only_for_the_tests_own_timers():
            loop = asyncio.get_running_loop()
            await asyncio.sleep(5)
            await asyncio.wait_for(asyncio.sleep(1), timeout=3)
            assert loop.time() == 6
            assert loop.steps == [5, 1]

        async def test_a_block_on_it_is_still_seen():
            import time
            await asyncio.sleep(1)
            time.sleep(0.001)
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    assert "test_a_block_on_it_is_still_seen" in result.stdout.str()


def test_isolated_asyncio_test_cases_are_watched(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(
        test_unit="""
        import asyncio
        import time
        import unittest

        class Cases(unittest.IsolatedAsyncioTestCase):
            async def asyncSetUp(self):
                self.ready = True

            async def test_sleeps(self):
                time.sleep(0.3)

            async def test_fine(self):
                await asyncio.sleep(0.01)
                self.assertTrue(self.ready)

            async def test_in_parts(self):
                for i in range(3):
                    with self.subTest(i=i):
                        await asyncio.sleep(0)
        """
    )
    result = run(pytester, "--loopwatch-report=report.json")
    result.assert_outcomes(passed=2, failed=1)
    report = report_of(pytester)
    assert report["watched"] == 3  # tests, not reports: subtests report each part
    assert list(report["blocked"]) == ["test_unit.py::Cases::test_sleeps"]
    assert "no test blocked" not in result.stdout.str()


def test_an_async_test_no_known_loop_runs_is_counted_not_watched(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makeconftest(
        """
        import inspect
        import pytest

        @pytest.hookimpl(tryfirst=True)
        def pytest_pyfunc_call(pyfuncitem):
            if inspect.iscoroutinefunction(pyfuncitem.obj):
                coro = pyfuncitem.obj()
                try:
                    coro.send(None)  # a runner of its own: no asyncio, no trio
                except StopIteration:
                    pass
                return True
            return None
        """
    )
    pytester.makepyfile(test_own="import time\nasync def test_own():\n    time.sleep(0.01)\n")
    result = run(pytester, "-p", "no:asyncio", "-p", "no:anyio")
    result.assert_outcomes(passed=1)
    output = result.stdout.str()
    assert "1 async test(s) not watched" in output
    assert "no test blocked" not in output
    assert "no watched test blocked the loop (0 watched" in output


def test_under_xdist_the_controller_adds_up_the_workers_findings(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        test_many="""
        import asyncio
        import time

        async def test_blocks_a():
            time.sleep(0.001)

        async def test_blocks_b():
            time.sleep(0.001)

        async def test_fine_a():
            await asyncio.sleep(0)

        async def test_fine_b():
            await asyncio.sleep(0)
        """
    )
    result = run(pytester, "-n", "2", "--loopwatch-report=report.json")
    result.assert_outcomes(passed=2, failed=2)
    output = result.stdout.str()
    assert "no test blocked" not in output
    assert "test_many.py::test_blocks_a: time.sleep(0.001)" in output
    assert "test_many.py::test_blocks_b: time.sleep(0.001)" in output
    report = report_of(pytester)
    assert sorted(report["blocked"]) == [
        "test_many.py::test_blocks_a",
        "test_many.py::test_blocks_b",
    ]
    assert report["watched"] == 4
    assert output.count("loopwatch: threshold") == 1  # the header, the controller's


def test_formatting_an_error_reads_source_files_and_is_not_a_blocking_call(
    pytester: pytest.Pytester,
) -> None:
    """``logger.exception`` reads the source of each frame through linecache: not the test's."""
    pytester.makeini(INI)
    pytester.makepyfile(
        failing_helper="def fail():\n    raise ValueError('boom')\n",
        test_log="""
        import logging
        import traceback
        import failing_helper

        async def test_logs_an_exception():
            try:
                failing_helper.fail()
            except ValueError:
                logging.getLogger("app").exception("it failed")
                traceback.format_exc()
        """,
    )
    run(pytester).assert_outcomes(passed=1)


def test_a_debugger_session_is_not_a_stall(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        test_pdb="""
        async def test_stops_at_a_breakpoint():
            x = 1
            breakpoint()
            assert x == 1
        """
    )
    # What a person does at the prompt: look around (slowly), then continue.
    commands = b"p x\n!import time; time.sleep(0.3)\nl\nc\n"
    result = pytester.run(
        sys.executable, "-m", "pytest", "--loopwatch", "-p", "no:cacheprovider", "-s",
        stdin=commands,
    )  # fmt: skip
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("ini", "args", "message"),
    [
        ("loopwatch_threshold = abc", (), "loopwatch_threshold in "),
        ("loopwatch_threshold = inf", (), "must be a finite number of seconds > 0"),
        ("", ("--loopwatch-threshold=nan",), "--loopwatch-threshold: 'nan' must be"),
        ("", ("--loopwatch-threshold=-1",), "--loopwatch-threshold: '-1' must be"),
        ("loopwatch = maybe", (), "loopwatch = 'maybe' in "),
        ("loopwatch_allow = at:", (), "the call-site form is 'at:GLOB'"),
        ("", ("--loopwatch-report=missing/folder/r.json",), "--loopwatch-report missing"),
        ("", ("--loopwatch-report=.",), "is a folder"),
    ],
)
def test_bad_settings_are_usage_errors_naming_the_key_and_its_source(
    pytester: pytest.Pytester, ini: str, args: tuple[str, ...], message: str
) -> None:
    pytester.makeini(INI + ini + "\n")
    pytester.makepyfile(test_x="async def test_x():\n    pass\n")
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert message in err
    assert "Traceback" not in err
    assert "INTERNALERROR" not in result.stdout.str() + err
    if "in " in message:
        assert "tox.ini" in err  # the ini file the key came from


def test_the_header_says_the_settings_and_who_has_faulthandlers_timer(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI + "loopwatch_allow = at:tests/*\n")
    pytester.makepyfile(test_x="async def test_x():\n    pass\n")
    header = run(pytester).stdout.str()
    assert "loopwatch: threshold 0.1 s, 1 allow entries, native dump after 0.5 s" in header
    pytester.makeini(INI + "faulthandler_timeout = 30\n")
    header = run(pytester).stdout.str()
    assert "native dump off (faulthandler_timeout = 30 has faulthandler's one timer)" in header


def test_a_call_site_allow_covers_the_test_folder_and_not_the_code_it_tests(
    pytester: pytest.Pytester,
) -> None:
    """The aiofiles case: its tests open files to check results; its code must not."""
    pytester.makeini(INI + "loopwatch_allow = at:tests/*\n")
    pytester.mkpydir("mylib")
    (pytester.path / "mylib" / "store.py").write_text(
        "def load(path):\n    with open(path) as f:\n        return f.read()\n"
    )
    tests = pytester.mkdir("tests")
    (tests / "test_files.py").write_text(
        "import mylib.store\n"
        "async def test_checks_a_result_with_open():\n"
        "    with open(__file__) as f:\n"
        "        assert f.read()\n"
        "async def test_the_library_still_blocks():\n"
        "    assert mylib.store.load(__file__)\n"
    )
    result = run(pytester, "--rootdir", str(pytester.path), "--import-mode=importlib")
    result.assert_outcomes(passed=1, failed=1)
    assert "mylib/store.py:2 load" in result.stdout.str()


def test_nothing_is_left_installed_after_a_test_that_patched_over_our_hooks(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        test_patch="""
        import sqlite3
        import time

        REAL_SLEEP = time.sleep
        REAL_CONNECT = sqlite3.connect

        async def test_patches(monkeypatch):
            monkeypatch.setattr(time, "sleep", lambda s: None)
            monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: None)

        def test_then_sees_the_real_ones():
            assert time.sleep is REAL_SLEEP
            assert sqlite3.connect is REAL_CONNECT
        """
    )
    run(pytester).assert_outcomes(passed=2)


def test_nothing_is_printed_or_logged_into_a_tests_captured_output(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI + "log_level = DEBUG\n")
    pytester.makepyfile(
        test_quiet="""
        import asyncio
        import time

        async def test_first(caplog, capsys):
            await asyncio.sleep(0.01)
            time.sleep(0.15)
            await asyncio.sleep(0.01)
            assert [r for r in caplog.records if r.name.startswith("loopwatch")] == []
            assert capsys.readouterr() == ("", "")
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "loopwatch: this test blocked the event loop" in output
    assert "Captured log call" not in output


def test_a_warning_under_filterwarnings_error_is_no_internal_error(
    pytester: pytest.Pytester,
) -> None:
    """anyio's suite turns every warning into an error: ours must not crash pytest."""
    pytester.makeini(INI + "filterwarnings = error\n")
    pytester.makepyfile(
        test_noise="""
        import asyncio
        from loopwatch import pytest_plugin
        from loopwatch.findings import Finding

        async def test_with_a_stall_that_has_no_line():
            await asyncio.sleep(0)
            watch = pytest_plugin._audited[0].current
            watch.add(Finding("stall", "the loop was blocked (wait)", 0.103, "unknown", None, noise=True))
        """
    )
    result = run(pytester, "--loopwatch-report=report.json")
    result.assert_outcomes(passed=1)
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert list(report_of(pytester)["warnings"]) == [
        "test_noise.py::test_with_a_stall_that_has_no_line"
    ]
