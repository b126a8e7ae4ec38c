"""LogThrottle: first event at once, repeats summarised with their count."""

from __future__ import annotations

from typing import Any

from loopwatch.throttle import LogThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_first_event_passes_repeats_are_summarised_when_the_window_ends() -> None:
    """Three repeats within the window become one summary with ``repeats=3``."""
    out: list[dict[str, Any]] = []
    clock = Clock()
    throttle = LogThrottle(out.append, 10.0, clock=clock)
    throttle.offer("k", {"n": 1}, value=0.5)
    for n in (2, 3, 4):
        clock.now += 1
        throttle.offer("k", {"n": n}, value=float(n))
    assert out == [{"n": 1}]
    clock.now = 10.5
    throttle.flush()
    assert out[1] == {"n": 4, "repeats": 3, "window_s": 10.0, "value_total": 9.0, "value_max": 4.0}


def test_keys_are_independent_and_force_flush_empties() -> None:
    """Different keys each get their first line; ``force`` emits open summaries."""
    out: list[dict[str, Any]] = []
    throttle = LogThrottle(out.append, 10.0, clock=Clock())
    throttle.offer("a", {"k": "a"})
    throttle.offer("b", {"k": "b"})
    throttle.offer("a", {"k": "a"})
    throttle.flush(force=True)
    assert out == [{"k": "a"}, {"k": "b"}, {"k": "a", "repeats": 1, "window_s": 10.0}]
    throttle.flush(force=True)
    assert len(out) == 3


def test_an_offer_after_the_window_closes_the_old_one_first() -> None:
    """A repeat after the window emits the summary, then itself as a new first line."""
    out: list[dict[str, Any]] = []
    clock = Clock()
    throttle = LogThrottle(out.append, 1.0, clock=clock)
    throttle.offer("a", {"i": 1})
    throttle.offer("a", {"i": 2})
    clock.now = 2.0
    throttle.offer("a", {"i": 3})
    assert out == [{"i": 1}, {"i": 2, "repeats": 1, "window_s": 1.0}, {"i": 3}]
