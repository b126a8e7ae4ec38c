"""``run_sync``'s lifecycle: one process-wide thread cache, and nothing of a call or a loop kept.

The rules of ``asyncio.to_thread`` that ``run_sync`` keeps (context, the end of
``asyncio.run``), the standard library's own ``to_thread`` tests run against it, and
what a process-wide cache owes the process: loops that come and go, failed thread
starts, fork.
"""

from __future__ import annotations

import asyncio
import contextvars
import decimal
import gc
import io
import subprocess
import sys
import textwrap
import threading
import time
import unittest
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import loopwatch
from loopwatch import Offload, ThreadPool, ThreadStrategy, run_sync
from loopwatch.threadpool import THREAD_CACHE
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
user: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="nobody")


def python(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter of this venv, from the project root."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


def _set_context() -> None:
    user.set("alice")
    decimal.getcontext().prec = 3


def _read_context() -> tuple[str, int]:
    return user.get(), decimal.getcontext().prec


async def _set_then_read() -> tuple[str, int]:
    await run_sync(_set_context)
    return await run_sync(_read_context)


def test_each_call_runs_in_a_context_of_its_own_when_the_caller_has_none() -> None:
    # A loop in a thread of its own, in an empty context: what a fresh service has.
    def in_an_empty_context() -> tuple[str, int]:
        return contextvars.Context().run(asyncio.run, _set_then_read())

    result: list[tuple[str, int]] = []
    thread = threading.Thread(target=lambda: result.append(in_an_empty_context()))
    thread.start()
    thread.join(30)
    assert result == [("nobody", decimal.DefaultContext.prec)]


async def test_each_call_runs_in_a_copy_of_the_callers_context() -> None:
    user.set("bob")
    await run_sync(user.set, "alice")
    assert await run_sync(user.get) == "bob"
    assert user.get() == "bob"


@pytest.mark.parametrize(
    ("runner", "imports"), [("asyncio.run", ""), ("uvloop.run", "import uvloop")]
)
def test_asyncio_run_waits_for_a_call_still_running(
    tmp_path: Path, runner: str, imports: str
) -> None:
    out = tmp_path / "written"
    script = f"""
        import asyncio, sys, threading, time
        from pathlib import Path
        {imports}
        import loopwatch

        started = threading.Event()

        def write(path):
            started.set()
            try:
                time.sleep(0.3)
            finally:
                Path(path).write_text("complete")

        async def main():
            global call
            call = asyncio.get_running_loop().create_task(loopwatch.run_sync(write, sys.argv[1]))
            await loopwatch.run_sync(started.wait, 10)

        {runner}(main())
    """
    done = python(script, str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_text() == "complete"


def test_a_call_that_never_returns_is_named_and_left_at_the_bound() -> None:
    script = """
        import asyncio, logging, threading
        import loopwatch, loopwatch.threadpool

        logging.basicConfig(format="%(name)s %(levelname)s %(message)s")
        loopwatch.threadpool.SHUTDOWN_TIMEOUT = 0.5
        started = threading.Event()

        def wait_for_ever():
            started.set()
            threading.Event().wait()

        async def main():
            global call
            call = asyncio.get_running_loop().create_task(loopwatch.run_sync(wait_for_ever))
            await loopwatch.run_sync(started.wait, 10)

        asyncio.run(main())
        print("returned")
    """
    started = time.monotonic()
    done = python(script, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "returned"
    assert time.monotonic() - started < 20
    assert "loopwatch WARNING 1 offloaded call(s) still running after 0.5 s" in done.stderr
    assert "wait_for_ever (loopwatch-" in done.stderr


def test_two_thousand_loops_leave_no_loop_and_few_threads() -> None:
    script = """
        import asyncio, gc, threading
        import loopwatch

        for i in range(2000):
            assert asyncio.run(loopwatch.run_sync(abs, -i)) == i
        gc.collect()
        loops = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop)]
        print(len(loops), threading.active_count())
    """
    done = python(script, timeout=120)
    assert done.returncode == 0, done.stderr
    loops, threads = map(int, done.stdout.split())
    assert loops <= 2
    assert threads <= 40


def test_a_failed_thread_start_recovers_and_no_call_runs_twice() -> None:
    # Address space for a few more thread stacks only: "can't start new thread", as
    # with too little memory or a low ``ulimit -u``.
    script = """
        import asyncio, resource, threading
        import loopwatch

        def address_space():
            for line in open("/proc/self/status"):
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024

        ran = []
        release = threading.Event()

        def call(i):
            ran.append(i)
            release.wait(10)
            return i

        async def main():
            await loopwatch.run_sync(abs, 1)
            soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            resource.setrlimit(resource.RLIMIT_AS, (address_space() + 30 * 2**20, hard))
            tasks = [asyncio.create_task(loopwatch.run_sync(call, i)) for i in range(12)]
            await asyncio.sleep(0.1)
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
            release.set()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            failed = [i for i, o in enumerate(outcomes) if isinstance(o, RuntimeError)]
            done = [o for o in outcomes if isinstance(o, int)]
            assert failed, outcomes
            assert sorted(ran) == sorted(done), (ran, done)
            assert len(ran) == len(set(ran))
            assert not set(failed) & set(ran)
            later = await asyncio.wait_for(
                asyncio.gather(*(loopwatch.run_sync(call, 100 + i) for i in range(20))), 10
            )
            assert later == [100 + i for i in range(20)]
            print(len(failed), len(done))

        asyncio.run(main())
    """
    done = python(script)
    assert done.returncode == 0, done.stderr
    failed, succeeded = map(int, done.stdout.split())
    assert failed >= 1
    assert succeeded >= 1


def test_a_forked_child_runs_calls_though_the_parents_threads_were_busy() -> None:
    script = """
        import asyncio, os, signal, threading
        import loopwatch

        release = threading.Event()
        pool = loopwatch.ThreadPool(2)

        async def parent():
            busy = [pool.submit(release.wait, (10,), {}).future for _ in range(2)]
            busy.append(asyncio.ensure_future(loopwatch.run_sync(release.wait, 10)))
            await asyncio.sleep(0.1)
            pid = os.fork()
            if pid == 0:
                signal.alarm(10)
                os._exit(child())
            release.set()
            await asyncio.gather(*busy)
            _, status = os.waitpid(pid, 0)
            print("child", os.waitstatus_to_exitcode(status))

        def child():
            async def calls():
                one = await loopwatch.run_sync(abs, -3)
                two = await pool.submit(abs, (-4,), {}).future
                return one + two
            return 0 if asyncio.run(calls()) == 7 else 1

        asyncio.run(parent())
    """
    done = python(script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "child 0"


class Big:
    """Something a test can tell is gone."""

    def __init__(self) -> None:
        self.payload = bytearray(1_000_000)

    def method(self) -> int:
        return len(self.payload)


def _fail_with(big: Big) -> None:
    raise ValueError(big)


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Freed means freed by reference counting: no cycle left for the collector."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def test_an_argument_is_not_kept_once_its_call_returned(no_gc: None) -> None:
    big = Big()
    gone = weakref.ref(big)
    assert await run_sync(len, [big]) == 1
    del big
    assert gone() is None


async def test_a_callable_is_not_kept_once_its_call_returned(no_gc: None) -> None:
    big = Big()
    gone = weakref.ref(big)
    assert await run_sync(big.method) == 1_000_000
    del big
    assert gone() is None


async def test_a_result_is_not_kept_once_its_caller_has_it(no_gc: None) -> None:
    result = await run_sync(Big)
    gone = weakref.ref(result)
    del result
    await asyncio.sleep(0)  # the loop's handle that woke this task holds its future
    assert gone() is None


async def test_a_raised_exception_keeps_no_call_alive(no_gc: None) -> None:
    big = Big()
    gone = weakref.ref(big)
    with pytest.raises(ValueError):
        await run_sync(_fail_with, big)
    del big
    await asyncio.sleep(0)
    assert gone() is None


def test_results_of_calls_ended_after_their_loop_closed_are_released() -> None:
    release = threading.Event()
    made: list[weakref.ref[Big]] = []

    def make() -> Big:
        release.wait(10)
        big = Big()
        made.append(weakref.ref(big))
        return big

    loop = asyncio.new_event_loop()
    tasks: list[asyncio.Task[Any]] = []

    async def start() -> None:
        tasks.extend(asyncio.ensure_future(run_sync(make)) for _ in range(9))
        await asyncio.sleep(0.05)

    loop.run_until_complete(start())
    loop.close()
    release.set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        gc.collect()
        if len(made) == 9 and all(ref() is None for ref in made):
            break
        time.sleep(0.02)
    assert len(made) == 9
    assert [ref() for ref in made if ref() is not None] == []
    for task in tasks:
        task._log_destroy_pending = False  # type: ignore[attr-defined]  # closed with the loop on purpose


def _idle_timeout(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    monkeypatch.setattr(THREAD_CACHE, "idle_timeout", seconds)
    THREAD_CACHE.in_each_thread(lambda: None)  # the idle ones wait again, with it


async def test_threads_are_shared_by_loops_and_end_when_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def in_a_new_loop() -> int:
        return asyncio.run(run_sync(threading.get_ident))

    idents = [await asyncio.to_thread(in_a_new_loop) for _ in range(6)]
    assert len(set(idents)) <= 2, "idle cache threads are reused, whichever loop calls"
    _idle_timeout(monkeypatch, 0.05)
    await wait_until(lambda: THREAD_CACHE.threads == 0, timeout=5)
    assert await run_sync(abs, -3) == 3  # a new thread takes it


async def test_a_dropped_strategy_leaves_no_thread_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    _idle_timeout(monkeypatch, 0.05)
    strategy = ThreadStrategy(max_workers=3)
    offload = Offload(strategy)
    await asyncio.gather(*(offload(time.sleep, 0.02) for _ in range(3)))
    del strategy, offload
    await wait_until(lambda: THREAD_CACHE.threads == 0, timeout=5)


def test_the_standard_librarys_to_thread_tests_pass_with_run_sync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # This interpreter's own copy (pyenv's Pythons ship it; Debian's: libpython3-testsuite).
    test_threads = pytest.importorskip("test.test_asyncio.test_threads")

    calls = 0

    def counted(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return run_sync(fn, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counted)
    suite = unittest.defaultTestLoader.loadTestsFromModule(test_threads)
    out = io.StringIO()
    result = unittest.TextTestRunner(stream=out, verbosity=2).run(suite)
    assert result.wasSuccessful(), out.getvalue()
    assert result.testsRun == 6, out.getvalue()
    assert calls >= 15, "each test called run_sync in place of to_thread"


def test_the_public_pool_is_the_cache_limited() -> None:
    assert loopwatch.ThreadPool is ThreadPool
    with pytest.raises(ValueError, match="max_workers"):
        ThreadPool(0)
