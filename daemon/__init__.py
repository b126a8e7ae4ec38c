"""loopwatch: run synchronous work from asyncio and prove the event loop stays free."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("loopwatch")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
