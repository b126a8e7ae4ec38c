"""Stacks as ``file:line function`` lines, and which frame of one is the user's code."""

from __future__ import annotations

import re
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

STACK_LIMIT = 30
# C0 and C1 control characters (ESC starts every terminal escape, OSC included), DEL,
# and lone surrogates (undecodable bytes of a file name, which a strict stdout refuses).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_MAX_DEPTH = 256

_LIBRARY_DIR = str(Path(__file__).parent) + "/"
_LIBRARY_DIRS = (_LIBRARY_DIR, str(Path(_LIBRARY_DIR).resolve()) + "/")
# Files or directories an application declared its own although they sit where the
# rule above would call them someone else's (see ``user_code``).
_declared: tuple[str, ...] = ()


def _not_user_prefixes() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    keys = ("stdlib", "platstdlib", "purelib", "platlib", "scripts")
    dirs = {paths[key] for key in keys if key in paths}
    dirs |= {str(Path(d).resolve()) for d in dirs}
    return tuple(d.rstrip("/") + "/" for d in dirs)


_NOT_USER = _not_user_prefixes()


def user_code(*paths: str | Path) -> None:
    """Declare files or directories to be the user's code wherever they are installed.

    A stall's culprit is the innermost line of the user's code: by default any file
    outside the standard library, site-packages and loopwatch. An application that ships
    its targets inside an installed package (as a service installed with pip does) names
    them here so that stall reports point at them. Each call adds to what was declared
    before: a library that declares its own targets (the daemon does) takes nothing away
    from the application's.
    """
    global _declared  # noqa: PLW0603 - process-wide, like logging's configuration
    found: set[str] = set(_declared)
    for path in paths:
        text = str(path)
        found.add(text)
        found.add(str(Path(text).resolve()))
    _declared = tuple(sorted(found))


def declared() -> tuple[str, ...]:
    """The paths ``user_code`` declared (for a helper process that must judge the same)."""
    return _declared


def is_user_file(filename: str) -> bool:
    """False for the standard library, site-packages and loopwatch, unless declared."""
    if _declared and filename.startswith(_declared):
        return True
    if filename.startswith("<") or "/site-packages/" in filename or "/dist-packages/" in filename:
        return False
    return not filename.startswith((*_NOT_USER, *_LIBRARY_DIRS))


def printable(text: str) -> str:
    """``text`` safe to write to a terminal: every control character replaced by U+FFFD."""
    return _UNPRINTABLE.sub("\ufffd", text)


def frame_lines(frame: FrameType | None, limit: int = STACK_LIMIT) -> list[str]:
    """The stack from ``frame`` outwards, innermost last, as ``file:line function`` lines."""
    lines: list[str] = []
    depth = 0
    while frame is not None and depth < _MAX_DEPTH:
        code = frame.f_code
        lines.append(f"{code.co_filename}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
        depth += 1
    lines.reverse()
    return lines[-limit:]


def thread_stack(thread_id: int, limit: int = STACK_LIMIT) -> list[str]:
    """The thread's current stack (empty when it has no Python frame)."""
    return frame_lines(sys._current_frames().get(thread_id), limit)


def file_and_function(line: str) -> tuple[str, str]:
    """The file and the function of a ``file:line function`` line (file ``""`` if none)."""
    where, _, function = line.rpartition(" ")
    return where.rpartition(":")[0], function


def is_user_line(line: str) -> bool:
    """Whether a ``file:line function`` line is in the user's code (``unknown`` is not)."""
    filename = file_and_function(line)[0]
    return bool(filename) and is_user_file(filename)


def culprit_of(stack: Sequence[str]) -> str:
    """The innermost line of the user's code; the innermost line when there is none."""
    for line in reversed(stack):
        if is_user_line(line):
            return line
    return stack[-1] if stack else "unknown"


# The frames an event loop runs its callbacks from (asyncio's, or a C loop's caller),
# by file and function: ``subprocess.run`` is no loop.
_LOOP_RUNNERS = frozenset({"_run_once", "run_forever", "run_until_complete", "run"})
_LOOP_FILES = ("/asyncio/base_events.py", "/asyncio/runners.py", "/uvloop/__init__.py")


def culprit_on_loop(stack: Sequence[str]) -> str:
    """The culprit of a loop thread's stack: found below the loop's own frames.

    A loop stuck in a library's code that no line of the user's called (a callback
    the library scheduled) is that library line, not the ``asyncio.run`` above the loop.
    A stack with no loop frames (a pool thread's) is ``culprit_of`` it.
    """
    below = _below_loop(stack)
    return culprit_of(below or stack)


def running_user_line(loop_stack: Sequence[str]) -> str | None:
    """The user's line a loop thread's stack is in below its loop's frames, if any.

    None when the loop waits in its selector: the user's lines above the loop (the
    ``asyncio.run`` of a ``main.py``) are no code it runs.
    """
    below = _below_loop(loop_stack)
    line = culprit_of(below)
    return line if below and is_user_line(line) else None


def _below_loop(stack: Sequence[str]) -> Sequence[str]:
    """The frames below the innermost of a loop's own (all of them when there is none)."""
    start = 0
    for index, line in enumerate(stack):
        filename, function = file_and_function(line)
        if function in _LOOP_RUNNERS and filename.endswith(_LOOP_FILES):
            start = index + 1
    return stack[start:]
