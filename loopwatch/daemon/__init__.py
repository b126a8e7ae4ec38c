"""The loopwatch daemon: workers from config, on the ``loopwatch`` library, under aiorun.

Installed as ``loopwatch.daemon`` (its source folder is the top-level ``daemon/``): a
top-level ``daemon`` package is python-daemon's, and the two would break each other.
"""

from pathlib import Path

from loopwatch import __version__, frames

# The built-in workloads and example executors are targets, written as a user's would be:
# stall reports name their lines although they are installed inside loopwatch.
_HERE = Path(__file__).parent
frames.user_code(_HERE / "workloads.py", _HERE / "executors.py")

__all__ = ["__version__"]
