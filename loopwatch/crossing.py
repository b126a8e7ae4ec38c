"""What crosses to a process pool and back: pickled, or refused with a named error.

A process pool pickles a call's target and arguments in a feeder thread, and its result
in the child. Either can fail for a value that a thread takes as it is (a lock, a
connection, a generator), and the failure then looks like any ``TypeError`` the target
might raise. ``SealedCall`` and ``Sealed`` pickle their contents themselves and raise
``UnpicklableError`` instead, saying which side failed: arguments that never crossed
(the call did not run), or a result that cannot come back (it ran, once).

``probe`` pickles a value into a bounded sink, on whatever thread calls it: the ``auto``
strategy probes a caller's calls on its pool threads, off the loop, and learns whether
and at what cost a process could take them.
"""

from __future__ import annotations

import io
import pickle
from time import perf_counter
from typing import Any

from loopwatch import targets
from loopwatch.errors import StrategyError

# Pickling stops here: enough to know a call is too big to be worth a process, bounded
# in time and memory whatever the value (each pickle frame is at most 64 KiB).
PROBE_LIMIT = 4 * 1024 * 1024


class UnpicklableError(StrategyError):
    """The arguments or the result of a call in a process pool cannot be pickled."""

    def __init__(self, side: str, error: str) -> None:
        self.side = side  # "arguments": the call never ran; "result": it ran, once
        self.error = error
        verb = "cannot go to" if side == "arguments" else "cannot come back from"
        super().__init__(f"its {side} {verb} a process: {error}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.side, self.error))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _seal(value: object, side: str) -> bytes:
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # anything a __reduce__ may raise
        raise UnpicklableError(side, _describe(exc)) from None


def _unsealed(data: bytes) -> Any:
    return pickle.loads(data)  # noqa: S301 - our own payload, from our own pool child


class Sealed:
    """A call's result on its way back from a process: unpickled as the value itself."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unsealed, (_seal(self.value, "result"),))


class SealedCall:
    """A target with its arguments, pickled as one: a failure names the arguments' side."""

    __slots__ = ("__wrapped__", "args", "kwargs")

    def __init__(self, fn: targets.Target, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.__wrapped__ = fn  # stall reports name the target through it
        self.args = args
        self.kwargs = kwargs

    def __call__(self) -> Any:
        """Run the target with its arguments."""
        return self.__wrapped__(*self.args, **self.kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        data = _seal((self.__wrapped__, self.args, self.kwargs), "arguments")
        return (_unsealed_call, (data,))


def _unsealed_call(data: bytes) -> SealedCall:
    fn, args, kwargs = _unsealed(data)
    return SealedCall(fn, args, kwargs)


class _TooBigError(Exception):
    pass


class _Sink(io.RawIOBase):
    """Counts what is written; stops the pickling past ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.size = 0
        self._limit = limit

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        written = len(memoryview(data))
        self.size += written
        if self.size > self._limit:
            raise _TooBigError
        return written


def probe(value: object, limit: int = PROBE_LIMIT) -> tuple[float, int] | str:
    """(seconds, bytes) to pickle ``value``, or why it cannot be (unpicklable, too big)."""
    sink = _Sink(limit)
    started = perf_counter()
    try:
        pickle.dump(value, sink, protocol=pickle.HIGHEST_PROTOCOL)
    except _TooBigError:
        return f"over {limit // (1024 * 1024)} MB pickled"
    except Exception as exc:  # anything a __reduce__ may raise
        return _describe(exc)
    return perf_counter() - started, sink.size
