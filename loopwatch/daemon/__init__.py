"""The loopwatch daemon: workers from config, on the ``loopwatch`` library, under aiorun.

Its source folder is ``loopwatch/daemon/``: a top-level ``daemon`` package is
python-daemon's, and the two would break each other. It needs the ``daemon`` extra
(``pip install "loopwatch[daemon]"``); without it, any use of it says so in one line and
exits 69, as a service that cannot start.
"""

import importlib.util
import sys
from pathlib import Path

from loopwatch import __version__, frames

# What ``pip install "loopwatch[daemon]"`` adds to the library's prometheus-client.
EXTRA = ("aiorun", "pydantic", "rich", "structlog")
EXIT_UNAVAILABLE = 69


def _require_extra() -> None:
    missing = [name for name in EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        sys.stderr.write(
            f"loopwatch: the daemon needs {', '.join(missing)}, which the plain install "
            'leaves out: pip install "loopwatch[daemon]"\n'
        )
        raise SystemExit(EXIT_UNAVAILABLE)


_require_extra()

# The built-in workloads and example executors are targets, written as a user's would be:
# stall reports name their lines although they are installed inside loopwatch.
_HERE = Path(__file__).parent
frames.user_code(_HERE / "workloads.py", _HERE / "executors.py")

__all__ = ["__version__"]
