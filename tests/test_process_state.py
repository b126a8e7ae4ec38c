"""What loopwatch changes in the process has an owner: faulthandler's timer, across a fork."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from loopwatch import dumptimer
from loopwatch.dump import NativeDump

FORK_AFTER_WATCH = textwrap.dedent(
    """
    import asyncio, os, sys, time
    import loopwatch


    def block(seconds):
        time.sleep(seconds)


    async def child():
        got = []
        async with loopwatch.watch(dump_after=5, on_stall=got.append):
            await asyncio.sleep(0.05)
            block(0.3)
            assert await loopwatch.run_sync(sum, [1, 2]) == 3
            await asyncio.sleep(0.3)
        return [e for e in got if not e.ongoing]


    async def main():
        got = []
        async with loopwatch.watch(dump_after=5, on_stall=got.append):
            await asyncio.sleep(1.2)  # the dump armed, and armed again
            pid = os.fork()
            if pid == 0:
                os._exit(0 if asyncio.run(child()) else 3)
            _, status = os.waitpid(pid, 0)
            print("child exit", os.waitstatus_to_exitcode(status))
            block(0.3)
            await asyncio.sleep(0.3)
        print("parent stalls", len([e for e in got if not e.ongoing]))


    asyncio.run(main())
    """
)


def test_a_fork_after_watch_leaves_both_processes_watching() -> None:
    """The child inherited an armed faulthandler timer and hung at its first re-arm."""
    done = subprocess.run(
        [sys.executable, "-c", FORK_AFTER_WATCH],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "child exit 0" in done.stdout
    # The parent watched on: waitpid, a blocking call, and the block after it (one stall
    # or two, as they fall).
    assert "parent stalls 1" in done.stdout or "parent stalls 2" in done.stdout


def test_one_native_dump_holds_faulthandlers_timer_at_a_time() -> None:
    first, second = NativeDump(5.0), NativeDump(5.0)
    try:
        assert (first.held, second.held) == (True, False)
        assert dumptimer.holder() is first
    finally:
        first.close()
        second.close()
    third = NativeDump(5.0)
    try:
        assert third.held  # the first let it go when it closed
    finally:
        third.close()
    assert dumptimer.holder() is None


async def test_gc_callbacks_hold_one_function_while_any_loop_is_watched() -> None:
    import asyncio
    import gc
    import threading

    from prometheus_client import CollectorRegistry

    import loopwatch

    def ours() -> int:
        return sum(getattr(f, "__module__", "") == "loopwatch.causes" for f in gc.callbacks)

    assert ours() == 0
    other_loop_started, stop_other = threading.Event(), threading.Event()

    async def other() -> None:
        async with loopwatch.watch(CollectorRegistry(), dump_after=0):
            other_loop_started.set()
            while not stop_other.is_set():
                await asyncio.sleep(0.01)

    thread = threading.Thread(target=asyncio.run, args=(other(),))
    thread.start()
    other_loop_started.wait(5)
    async with loopwatch.watch(CollectorRegistry(), dump_after=0):
        assert ours() == 1  # two loops watched, one callback
    assert ours() == 1
    stop_other.set()
    thread.join(5)
    assert ours() == 0  # nothing watches: nothing runs per collection


def test_user_code_declarations_add_up() -> None:
    """The daemon's own declaration used to replace the application's."""
    import sysconfig

    from loopwatch import frames

    # An application installed with pip: site-packages is not user code unless declared.
    shop = sysconfig.get_paths()["purelib"] + "/shop"
    assert not frames.is_user_file(f"{shop}/handlers.py")
    before = frames.declared()
    try:
        frames.user_code(f"{shop}/handlers.py")
        import loopwatch.daemon  # noqa: F401 - declares its workloads as user code

        frames.user_code(f"{shop}/jobs.py")
        assert frames.is_user_file(f"{shop}/handlers.py")
        assert frames.is_user_file(f"{shop}/jobs.py")
    finally:
        frames._declared = before
