"""The loopwatch daemon: workers from config, on the ``loopwatch`` library, under aiorun."""

from loopwatch import __version__

__all__ = ["__version__"]
