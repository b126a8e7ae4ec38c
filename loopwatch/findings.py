"""What blocked a test's loop, and which findings fail it: pure functions, no pytest.

A ``Finding`` is a call known to block, or a stall. ``allowed`` says whether an allow
entry covers it; ``is_noise`` whether it is a warning rather than a failure;
``in_debugger`` whether a debugger, not the test, held the loop.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

from loopwatch import frames

# A stall this close to the threshold whose cause says "the machine, not the code" is a
# warning: a loaded CI host makes them (measured: one in five runs under 4 CPU hogs).
NOISE_CAUSES = frozenset({"starved", "unknown"})
NOISE_FACTOR = 2.0
# Frames of a debugger: a test stopped at a breakpoint is not blocking its loop.
DEBUGGER_FILES = ("/bdb.py", "/pdb.py")
DEBUGGER_PARTS = ("/pydevd", "/_pydevd", "/debugpy/")
# The call-site form of an allow entry: ``at:GLOB``, optionally after a call's name.
AT = "at:"


@dataclass
class Finding:
    """One thing that blocked the loop during a test."""

    kind: Literal["call", "stall"]
    what: str  # the call with its argument, or "the loop was blocked (cause)"
    seconds: float | None
    culprit: str  # innermost line of the user's code, "file:line function"
    test_line: str | None  # the test function's own line, when on the stack
    stack: list[str] = field(default_factory=list)
    noise: bool = False  # a warning, not a failure

    def line(self) -> str:
        """One line: what, how long, where."""
        took = "" if self.seconds is None else f" for {duration(self.seconds)}"
        where = f" at {self.culprit}"
        if self.test_line and self.test_line != self.culprit:
            where += f" (test line {self.test_line})"
        return f"{self.what}{took}{where}"

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON types: what a report carries (xdist, ``--loopwatch-report``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        """Undo ``as_dict``."""
        return cls(**data)


def duration(seconds: float) -> str:
    """``103.7 ms`` or ``1.20 s``."""
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def is_noise(
    cause: str, seconds: float, culprit: str, stack: Sequence[str], threshold: float
) -> bool:
    """Whether a stall is a warning: no culprit, or the machine's doing near the threshold.

    A stall with no line of code to show (an empty stack, ``unknown``) cannot be acted on:
    failing a test for it would be a verdict without evidence.
    """
    if not stack or culprit == "unknown":
        return True
    return cause in NOISE_CAUSES and seconds < threshold * NOISE_FACTOR


def in_debugger(stack: Iterable[str]) -> bool:
    """Whether a debugger's frames are on ``stack`` (a ``breakpoint()``, ``--pdb``, an IDE)."""
    for line in stack:
        filename = frames.file_and_function(line)[0]
        if filename.endswith(DEBUGGER_FILES) or any(p in filename for p in DEBUGGER_PARTS):
            return True
    return False


def check_entry(entry: str) -> str | None:
    """What is wrong with an allow entry, None when it is well formed."""
    call, _, glob = entry.partition(AT)
    if AT in entry and (not glob.strip() or (call and not call.endswith(" "))):
        return f"{entry!r}: the call-site form is 'at:GLOB' or 'CALL at:GLOB'"
    if not entry.strip():
        return "an empty entry"
    return None


def allowed(finding: Finding, entries: Iterable[str], rootdir: str = "") -> bool:
    """Whether an allow entry covers ``finding``.

    - ``time.sleep``, ``open``: that call; ``stall``: any stall;
    - ``mypkg.db``, ``path/file.py``, ``path/file.py:12``: a module, file or line anywhere
      on the stack (library code called from there is covered too);
    - ``at:GLOB``, ``CALL at:GLOB``: only where the call is made, the innermost frame of
      the user's code, whose file (relative to ``rootdir`` or absolute) matches GLOB;
      ``*`` crosses folders, so ``at:tests/*`` is the whole test folder.
    """
    return any(_covers(entry, finding, rootdir) for entry in entries)


def _covers(entry: str, finding: Finding, rootdir: str) -> bool:
    if AT in entry:
        return _made_at(finding, entry, rootdir)
    if finding.kind == "call" and finding.what.startswith(entry + "("):
        return True
    if finding.kind == "stall" and entry == "stall":
        return True
    return any(_site_matches(line, entry) for line in finding.stack)


def _made_at(finding: Finding, entry: str, rootdir: str) -> bool:
    call, _, glob = entry.partition(AT)
    call = call.strip()
    if call and not (
        finding.what.startswith(call + "(") or (finding.kind == "stall" and call == "stall")
    ):
        return False
    filename = frames.file_and_function(finding.culprit)[0]
    if not filename:
        return False
    relative = os.path.relpath(filename, rootdir) if rootdir else filename
    return fnmatchcase(relative, glob) or fnmatchcase(filename, glob)


def _site_matches(line: str, entry: str) -> bool:
    where = line.rpartition(" ")[0]  # file:line
    filename = where.rpartition(":")[0]
    if ":" in entry and entry.rpartition(":")[2].isdigit():
        return where.endswith(entry)  # a line: path/file.py:12
    if entry.endswith(".py") or "/" in entry:
        return filename.endswith(entry)
    module_path = "/" + entry.replace(".", "/")
    return module_path + ".py" in filename or module_path + "/" in filename
