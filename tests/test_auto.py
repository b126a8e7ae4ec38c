"""``auto``: the rule (``loopwatch.choice``), the GIL meter, and the strategy in a real loop."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

import loopwatch
from loopwatch.choice import MOVE_GIL_OF_CPU, MOVE_GIL_SHARE, Evidence, choose
from loopwatch.gilmeter import MEASURING, GilMeter, Measured
from loopwatch.strategies import AutoStrategy, Call, ThreadStrategy
from tests import targets
from tests.helpers import hogs_on_one_cpu, library_logs


def on_thread(cpu: float, gil: float, *, stall: float = 0.0, pickle: float = 0.0) -> Evidence:
    """10 calls over 1 s on a thread: CPU share ``cpu``, ``gil`` of the samples on the GIL."""
    return Evidence(
        strategy="thread",
        window_s=5.0,
        calls=10,
        wall_s=1.0,
        cpu_s=cpu,
        free_samples=round(100 * (1 - gil)),
        gil_samples=round(100 * gil),
        stall_gil_s=stall,
        pickle_s=pickle,
        pickle_bytes=100,
    )


@pytest.mark.parametrize(
    ("evidence", "fit", "words"),
    [
        # Shares as measured here with several kinds of target at once.
        (on_thread(cpu=0.0, gil=1.0), "thread", "they wait"),
        (on_thread(cpu=0.28, gil=0.9), "process", "held the GIL for 25%"),
        (on_thread(cpu=0.93, gil=0.99), "process", "held the GIL for 92%"),
        (on_thread(cpu=0.51, gil=0.35), "thread", "native code that lets go of it"),
        # Stalls the watchdog put on it, where the meter saw it wait for the GIL...
        (on_thread(cpu=0.07, gil=0.9, stall=0.5), "process", "the loop waited 0.50 s"),
        # ...and where the meter saw it compute without the GIL: not its stalls.
        (on_thread(cpu=0.5, gil=0.1, stall=0.5), "thread", "lets go of it"),
        # ...and where it hardly used a CPU (a sleeping I/O worker, named beside CPU hogs).
        (on_thread(cpu=0.02, gil=1.0, stall=0.5), "thread", "they wait"),
        (on_thread(cpu=0.9, gil=1.0, pickle=float("inf")), "thread", "cannot be pickled"),
        (on_thread(cpu=0.9, gil=1.0, pickle=0.08), "thread", "pickling a call's arguments"),
    ],
)
def test_the_rule_reads_what_the_calls_did(evidence: Evidence, fit: str, words: str) -> None:
    choice = choose(evidence)
    assert (choice.strategy, choice.decided) == (fit, True)
    assert words in choice.reason


def test_the_rule_has_a_band_between_moving_and_moving_back() -> None:
    """A process worker whose CPU share fell to where a thread worker would not move stays."""
    between = Evidence("process", window_s=5, calls=10, wall_s=1.0, cpu_s=0.2)
    assert choose(between).strategy == "process"
    assert choose(on_thread(cpu=0.1, gil=1.0)).strategy == "thread"
    waiting = Evidence("process", window_s=5, calls=10, wall_s=1.0, cpu_s=0.02)
    assert choose(waiting).strategy == "thread"
    assert not choose(Evidence("thread", window_s=5, calls=0, wall_s=0, cpu_s=0)).decided


def _spin_in_thread(fn: Callable[[], Any], key: str, stop: threading.Event) -> threading.Thread:
    def run() -> None:
        while not stop.is_set():
            Measured(fn, key)()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_the_meter_tells_gil_holders_from_native_code_that_lets_go() -> None:
    """While the meter holds the GIL, pure Python waits on it and hashlib keeps running."""
    stop = threading.Event()
    threads = [
        _spin_in_thread(lambda: targets.count(200_000), "python", stop),
        # 32 MB: ~19 ms of hashing per call here, against up to a switch interval (5 ms)
        # waiting for the GIL back after it; at 8 MB (~5 ms) the free share fell to 38%
        # once in CI, the hashing and the waiting being about as long.
        _spin_in_thread(lambda: targets.hash_buffer(32), "hashlib", stop),
    ]
    meter = GilMeter()
    try:
        for _ in range(100):
            meter.sample()
            time.sleep(0.005)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    python_free, python_gil = meter.take("python")
    hashlib_free, hashlib_gil = meter.take("hashlib")
    assert python_free + python_gil > 20
    assert hashlib_free + hashlib_gil > 20
    # Generous bounds: measured 0-12% and 57-98% free, beside two CPU hogs too; beside
    # two hogs and a second test process, pure Python read 32% once (a thread woken to
    # take the GIL waits for a CPU, runnable, and reads as free): the two stay apart.
    python_share = python_free / (python_free + python_gil)
    hashlib_share = hashlib_free / (hashlib_free + hashlib_gil)
    assert python_share < 0.5
    assert hashlib_share > 0.4
    assert hashlib_share - python_share > 0.2
    assert not MEASURING, "every call took its entry out when it ended"


async def _call_until(
    strategy: AutoStrategy, name: str, fn: Callable[..., Any], done: Callable[[], bool]
) -> list[str]:
    """Call ``fn`` through ``strategy`` (2 at a time) until ``done()``; where each call ran."""
    ran: list[str] = []
    offload = loopwatch.Offload(strategy, name=name)

    async def slot() -> None:
        while not done():
            ran.append(strategy.runs_as(name))
            await offload(fn)

    await asyncio.wait_for(asyncio.gather(slot(), slot()), timeout=60)
    return ran


async def test_auto_moves_pure_python_to_a_process_and_keeps_hashing_on_threads() -> None:
    auto = AutoStrategy(window=0.5, confirm=2, min_dwell=0.0)
    try:
        with library_logs() as logs:
            started = time.monotonic()
            await _call_until(
                auto,
                "python",
                targets.count,
                lambda: auto.runs_as("python") == "process" or time.monotonic() - started > 30,
            )
            hashed = time.monotonic()
            await _call_until(
                auto, "hashlib", targets.hash_buffer, lambda: time.monotonic() - hashed > 3
            )
    finally:
        await auto.aclose(5.0)
    assert auto.runs_as("python") == "process"
    assert auto.runs_as("hashlib") == "thread"
    [switched] = [e for e in logs if e["event"] == "strategy_switched"]
    assert (switched["worker"], switched["from"], switched["to"]) == ("python", "thread", "process")
    assert "held the GIL" in switched["reason"]
    assert switched["evidence"]["gil_share"] >= MOVE_GIL_SHARE  # the rule's own threshold
    decisions = {d["worker"]: d for d in auto.decisions()}
    assert decisions["python"]["switches"] == 1
    assert decisions["hashlib"]["switches"] == 0
    # Beside CPU hogs a hashing thread may get 7% of a CPU over its wall time: then the
    # reason says it waits. Either way its figures fail the move rule: it held the GIL for
    # less than the threshold, or for less than half of its CPU time (a busy host's
    # run-queue wait counts as CPU, so the held share can reach the threshold; CI on 3.13
    # read 90% CPU, 15% held). The reason rounds to whole percents, hence the point spare.
    reason = decisions["hashlib"]["reason"]
    assert "lets go of it" in reason or "they wait" in reason, reason
    figures = re.search(r"the CPU for (\d+)% .* held the GIL for (\d+)%", reason)
    assert figures is not None, reason
    cpu, held = int(figures[1]), int(figures[2])
    assert held < MOVE_GIL_SHARE * 100 + 1 or held < MOVE_GIL_OF_CPU * cpu + 1, reason


async def test_advise_logs_the_decision_and_moves_nothing() -> None:
    auto = AutoStrategy(mode="advise", window=0.5, confirm=2, min_dwell=0.0)
    advice: list[Any] = []
    try:
        with library_logs() as logs:
            started = time.monotonic()

            def advised() -> bool:
                advice[:] = [e for e in logs if e["event"] == "strategy_advice"]
                return bool(advice) or time.monotonic() - started > 30

            ran = await _call_until(auto, "python", targets.count, advised)
            # It goes on: the advice is given once, not every window.
            more = time.monotonic()
            ran += await _call_until(
                auto, "python", targets.count, lambda: time.monotonic() - more > 1.5
            )
    finally:
        await auto.aclose(5.0)
    assert set(ran) == {"thread"}
    assert len(advice) == 1
    assert (advice[0]["from"], advice[0]["to"], advice[0]["mode"]) == (
        "thread",
        "process",
        "advise",
    )
    assert not [e for e in logs if e["event"] == "strategy_switched"]
    [decision] = auto.decisions()
    assert decision["strategy"] == "thread"
    assert decision["advice"] == "process"


async def test_a_target_a_process_cannot_take_stays_on_threads_and_says_so_once() -> None:
    auto = AutoStrategy(window=0.5, confirm=1, min_dwell=0.0)
    lock = threading.Lock()  # unpicklable: the call cannot go to a process

    def spin_holding(held: threading.Lock = lock) -> int:
        with held:
            return targets.count(1_000_000)

    try:
        with library_logs() as logs:
            started = time.monotonic()
            told_at: list[float] = []

            def told_and_two_windows_more() -> bool:
                if not told_at and any(e["event"] == "strategy_advice" for e in logs):
                    told_at.append(time.monotonic())
                return bool(told_at) and time.monotonic() - told_at[0] > 1.0

            ran = await _call_until(
                auto,
                "locked",
                spin_holding,
                lambda: told_and_two_windows_more() or time.monotonic() - started > 30,
            )
    finally:
        await auto.aclose(5.0)
    assert set(ran) == {"thread"}
    told = [e for e in logs if e["event"] == "strategy_advice"]
    assert len(told) == 1
    assert "a process cannot take it" in told[0]["reason"]
    assert "cannot be pickled" in auto.decisions()[0]["reason"]


async def test_a_caller_is_named_by_its_target_without_a_name() -> None:
    auto = AutoStrategy(window=60)
    try:
        assert await auto.call(Call(targets.count, {"n": 10}), 10.0) == 0
    finally:
        await auto.aclose(5.0)
    assert [d["worker"] for d in auto.decisions()] == ["tests.targets.count"]


async def test_every_call_runs_once_across_a_move() -> None:
    """In-flight calls finish where they started; none is lost or run twice."""
    auto = AutoStrategy(window=0.5, confirm=1, min_dwell=0.0)
    results: list[int] = []
    offload = loopwatch.Offload(auto, name="python")

    calls = [0, 0, 0]

    async def slot(i: int) -> None:
        # Until the move, then as many calls again: calls on both sides of it, and in
        # flight across it, however slowly a loaded machine gets to the decision.
        after_move = 0
        while after_move < 10:
            j = calls[i]
            calls[i] += 1
            await offload(targets.count, 300_000)
            results.append(i * 1000 + j)
            if auto.runs_as("python") == "process":
                after_move += 1

    try:
        await asyncio.wait_for(asyncio.gather(*(slot(i) for i in range(3))), timeout=120)
    finally:
        await auto.aclose(5.0)
    assert auto.runs_as("python") == "process"
    assert sorted(results) == sorted({i * 1000 + j for i in range(3) for j in range(calls[i])})


async def _moved_to_process(auto: AutoStrategy, name: str, path: str) -> loopwatch.Offload:
    """Call a CPU-bound target through ``auto`` until it runs ``name`` in a process."""
    offload = loopwatch.Offload(auto, name=name)
    started = time.monotonic()

    async def slot() -> None:
        while auto.runs_as(name) != "process" and time.monotonic() - started < 60:
            await offload(targets.count_logged, path, 300_000)

    await asyncio.wait_for(asyncio.gather(slot(), slot()), timeout=90)
    assert auto.runs_as(name) == "process"
    return offload


def _runs(path: Path) -> int:
    return len(path.read_text().splitlines())


async def test_a_result_that_cannot_come_back_sends_the_caller_to_thread_for_good(
    tmp_path: Path,
) -> None:
    """#33: a target moved to process that later returns a lock failed every call, for ever."""
    auto = AutoStrategy(window=0.5, confirm=1, min_dwell=0.0)
    path = tmp_path / "runs"
    try:
        with library_logs() as logs:
            offload = await _moved_to_process(auto, "locky", str(path))
            before = _runs(path)
            with pytest.raises(loopwatch.StrategyError, match="_thread.lock"):
                await offload(targets.count_logged, str(path), 1000, lock=True)
            assert _runs(path) == before + 1  # it ran once, and is not run again
            for _ in range(20):  # every later call runs, on a thread
                assert isinstance(
                    await offload(targets.count_logged, str(path), 1000, lock=True),
                    type(threading.Lock()),
                )
            await asyncio.sleep(1.2)  # two windows: it is not moved back
            await offload(targets.count_logged, str(path), 300_000)
    finally:
        await auto.aclose(5.0)
    assert _runs(path) == before + 22
    assert auto.runs_as("locky") == "thread"
    back = [e for e in logs if e["event"] == "strategy_switched" and e["to"] == "thread"]
    assert len(back) == 1
    assert back[0]["worker"] == "locky"
    assert "_thread.lock" in back[0]["reason"]
    assert "for good" in auto.decisions()[0]["reason"]


async def test_arguments_that_cannot_go_run_the_call_on_a_thread_once(tmp_path: Path) -> None:
    auto = AutoStrategy(window=0.5, confirm=1, min_dwell=0.0)
    path = tmp_path / "runs"
    try:
        with library_logs() as logs:
            offload = await _moved_to_process(auto, "argy", str(path))
            before = _runs(path)
            assert await offload(targets.count_logged, str(path), 1000, give=threading.Lock()) == 0
            assert await offload(targets.count_logged, str(path), 1000, give=threading.Lock()) == 0
    finally:
        await auto.aclose(5.0)
    assert _runs(path) == before + 2  # neither lost nor run twice
    assert auto.runs_as("argy") == "thread"
    back = [e for e in logs if e["event"] == "strategy_switched" and e["to"] == "thread"]
    assert len(back) == 1
    assert "arguments cannot go to a process" in back[0]["reason"]


def test_auto_decides_again_on_a_second_loop(tmp_path: Path) -> None:
    """#33: its tick stayed on the first loop, closed, and no decision came again."""
    auto = AutoStrategy(window=0.5, confirm=1, min_dwell=0.0)
    path = tmp_path / "runs"

    async def first() -> None:
        await auto.call(Call(targets.count, {"n": 1000}, "first"), 10.0)

    async def second() -> None:
        try:
            await _moved_to_process(auto, "second", str(path))
        finally:
            await auto.aclose(5.0)

    asyncio.run(first())
    asyncio.run(second())
    assert auto.runs_as("second") == "process"


class _Reduced:
    """An argument that records the thread that pickles it."""

    threads: ClassVar[list[str]] = []

    def __reduce__(self) -> tuple[Any, ...]:
        self.threads.append(threading.current_thread().name)
        return (_Reduced, ())


async def test_the_pickling_check_runs_off_the_loop() -> None:
    auto = AutoStrategy(window=60)
    _Reduced.threads.clear()
    try:
        await auto.call(Call(_takes_any, {}, "checked", (_Reduced(),)), 10.0)
    finally:
        await auto.aclose(5.0)
    assert _Reduced.threads  # it was checked
    assert threading.main_thread().name not in _Reduced.threads


def _takes_any(value: object) -> int:
    return 0


async def test_a_shared_pool_too_small_is_named_as_the_bottleneck() -> None:
    auto = AutoStrategy(window=0.3, min_dwell=60.0)
    pool = ThreadStrategy(max_workers=2)
    auto.bind({"thread": pool})
    offload = loopwatch.Offload(auto, name="io")
    started = time.monotonic()

    def named() -> bool:
        return any("bottleneck" in d for d in auto.decisions())

    async def slot() -> None:
        while not named() and time.monotonic() - started < 20:
            await offload(targets.block, 0.05)

    try:
        await asyncio.wait_for(asyncio.gather(*(slot() for _ in range(6))), timeout=30)
    finally:
        await auto.aclose(5.0)
        await pool.aclose(5.0)
    [decision] = auto.decisions()
    assert "the shared thread pool is the bottleneck" in decision["bottleneck"]
    assert "of its 2 slots" in decision["bottleneck"]
    assert "[executors.thread] max_workers" in decision["bottleneck"]


def test_the_meters_proc_files_are_not_inherited_by_a_child() -> None:
    # A shell started with os.system inherited two of them (#33).
    import fcntl
    import os
    import threading

    from loopwatch.gilmeter import _ThreadFiles

    files = _ThreadFiles(threading.get_native_id())
    assert all(fd >= 0 for fd in files.fds)
    try:
        assert all(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC for fd in files.fds)
    finally:
        for fd in files.fds:
            os.close(fd)


# Windows as the daemon's ``phases`` target gave them (2 calls at a time, 50 ms each):
# sleeping, its calls hardly use a CPU and the meter finds them off the GIL's queue;
# counting, they use it throughout and wait for the GIL most of the time.
IO_WINDOW: dict[str, float] = {"cpu": 0.01, "free": 100, "gil": 0}
CPU_WINDOW: dict[str, float] = {"cpu": 0.95, "free": 2, "gil": 98}


def _replay(strategy: AutoStrategy, windows: list[dict[str, float]], window_s: float) -> list[str]:
    """Decide on each recorded window in turn, at its own (virtual) time; where it ran."""
    from loopwatch.strategies.auto import _Caller

    caller = strategy._callers["w"] = _Caller("w", since=0.0, dwell=strategy.min_dwell)
    caller.reset_window(0.0)
    ran: list[str] = []
    for i, window in enumerate(windows, start=1):
        wall = 2 * window_s  # two slots busy throughout
        caller.calls, caller.wall_s, caller.cpu_s = 40, wall, window["cpu"] * wall
        if caller.strategy == "thread":
            strategy._meter._free["w"] = int(window["free"])
            strategy._meter._gil["w"] = int(window["gil"])
        strategy._decide(caller, i * window_s)
        ran.append(caller.strategy)
    return ran


def test_a_change_of_phase_moves_once_after_it() -> None:
    """16 s of I/O, then CPU: one move, to process, only once the CPU phase has begun."""
    strategy = AutoStrategy(window=2.0, min_dwell=10.0)
    ran = _replay(strategy, [IO_WINDOW] * 8 + [CPU_WINDOW] * 12, 2.0)
    assert ran[:8] == ["thread"] * 8
    assert ran[-1] == "process"
    assert strategy._callers["w"].switches == 1


def test_a_target_that_alternates_every_window_does_not_flap() -> None:
    """I/O and CPU every other 2 s window, for 40 s: at most there and back."""
    strategy = AutoStrategy(window=2.0, min_dwell=10.0)
    _replay(strategy, [IO_WINDOW, CPU_WINDOW] * 10, 2.0)
    assert strategy._callers["w"].switches <= 2


def test_moving_back_soon_doubles_the_dwell() -> None:
    """Phases of 12 s each way: the first return comes at the dwell, later ones wait longer."""
    strategy = AutoStrategy(window=2.0, min_dwell=4.0)
    phases = ([CPU_WINDOW] * 6 + [IO_WINDOW] * 6) * 4
    ran = _replay(strategy, phases, 2.0)
    moves = [i for i in range(1, len(ran)) if ran[i] != ran[i - 1]]
    assert len(moves) >= 2
    assert strategy._callers["w"].dwell > 4.0


def compute_for(seconds: float) -> None:
    """Native code that lets go of the GIL, for ``seconds`` of CPU time."""
    import hashlib

    spent = time.thread_time() + seconds
    while time.thread_time() < spent:
        hashlib.sha256(b"x" * 1_000_000).digest()


def test_a_call_waiting_for_a_cpu_counts_as_computing() -> None:
    """CI (3.13, two test processes on two CPUs): a hashing worker on auto read "they
    wait" (CPU 14% of wall time): its threads spent the rest queued for a CPU.

    The call shares one CPU with two hogs: about a third of its wall time on it.
    """
    import os

    measured = Measured(compute_for, None)
    box: list[tuple[Any, float, float]] = []

    def on_the_hogs_cpu(cpu: int) -> None:
        os.sched_setaffinity(0, {cpu})
        box.append(measured(0.1))

    with hogs_on_one_cpu(2) as cpu:
        thread = threading.Thread(target=on_the_hogs_cpu, args=(cpu,))
        thread.start()
        thread.join()
    _, busy, wall = box[0]
    assert busy >= 0.8 * wall, (busy, wall)
