"""LogThrottle: one log line per key per window, with the count of the repeats it held back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

Emit = Callable[[dict[str, Any]], None]


@dataclass
class _Window:
    start: float
    repeats: int = 0
    value_total: float = 0.0
    value_max: float = 0.0
    last: dict[str, Any] = field(default_factory=dict)


class LogThrottle:
    """The first event of a key is emitted at once; repeats within ``window_s`` are held.

    When the window ends (checked on every ``offer`` and ``flush``), one summary with
    ``repeats`` and, when values were given, ``<value_name>_total`` and ``_max``, is emitted,
    so the count is never lost. Thread-safe: offered from the loop or the watchdog.
    """

    def __init__(
        self,
        emit: Emit,
        window_s: float,
        *,
        value_name: str = "value",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._emit = emit
        self._value_name = value_name
        self._window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[Hashable, _Window] = {}

    def offer(self, key: Hashable, fields: dict[str, Any], value: float | None = None) -> None:
        """Emit ``fields`` now, or count it into the key's open window."""
        to_emit = []
        with self._lock:
            now = self._clock()
            to_emit.extend(self._close_expired(now))
            window = self._windows.get(key)
            if window is None:
                self._windows[key] = _Window(start=now)
                to_emit.append(fields)
            else:
                window.repeats += 1
                window.last = fields
                if value is not None:
                    window.value_total += value
                    window.value_max = max(window.value_max, value)
        for event in to_emit:
            self._emit(event)

    def is_new(self, key: Hashable) -> bool:
        """Whether an ``offer`` of ``key`` now would be emitted at once (no open window)."""
        with self._lock:
            window = self._windows.get(key)
            return window is None or self._clock() - window.start >= self._window_s

    def flush(self, *, force: bool = False) -> None:
        """Emit the summaries of ended windows (of all windows with ``force``)."""
        with self._lock:
            now = float("inf") if force else self._clock()
            to_emit = self._close_expired(now)
        for event in to_emit:
            self._emit(event)

    def _close_expired(self, now: float) -> list[dict[str, Any]]:
        summaries = []
        for key, window in list(self._windows.items()):
            if now - window.start < self._window_s:
                continue
            del self._windows[key]
            if window.repeats:
                summary = dict(window.last, repeats=window.repeats, window_s=self._window_s)
                if window.value_max:
                    summary[f"{self._value_name}_total"] = round(window.value_total, 6)
                    summary[f"{self._value_name}_max"] = round(window.value_max, 6)
                summaries.append(summary)
        return summaries
