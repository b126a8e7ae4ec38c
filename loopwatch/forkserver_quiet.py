"""Preloaded by the forkserver that ``ProcessStrategy`` starts: there, SIGTERM is ignored.

A top-level module on purpose: importing it imports nothing of loopwatch but its lazy
``__init__``. Under ``loopwatch.strategies`` it imported every strategy into the
forkserver, and with a 64-descriptor limit and 60 children the pool's start hung instead
of failing with EMFILE (``test_running_out_of_file_descriptors_while_starting_exits_69``).

A SIGTERM sent to the whole process group (``timeout``, some supervisors) reached the
forkserver too. Its death closed the sentinel of every pool child it had forked, and the
pool broke (``BrokenProcessPool``) while the daemon was still draining its calls. The
forkserver needs no signal to end: it exits when the process that started it closes its
end of the "alive" pipe, and the pool's children ignore SIGTERM already (their
initializer). Imported anywhere but in the forkserver's ``main``, this does nothing.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType


def _in_forkserver() -> bool:
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "main" and code.co_filename.endswith("multiprocessing/forkserver.py"):
            return True
        frame = frame.f_back
    return False


# It must never fail: the forkserver survives only an ImportError of a preloaded module.
try:
    if _in_forkserver():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
except Exception:  # noqa: S110 - nothing to report to, and the pool must still start
    pass
