"""configure_logging(cfg): the one structlog.configure call, and stdlib logs through it."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from loopwatch.daemon.config import LoggingConfig
from loopwatch.events import fields_of

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def _renderer(fmt: str, stream: TextIO) -> structlog.types.Processor:
    # ConsoleRenderer writes ANSI colours even into pipes: choose by isatty().
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    if console:
        return structlog.dev.ConsoleRenderer(colors=stream.isatty())
    return structlog.processors.JSONRenderer()


def configure_logging(cfg: LoggingConfig, stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging (aiorun, asyncio) to one renderer on ``stream``.

    Safe to call again on reload: the level and format take effect at once.
    """
    stream = sys.stderr if stream is None else stream
    level = LEVELS[cfg.level]
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = _renderer(cfg.format, stream)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write per line (print() writes the line, then its newline): the library's
        # records reach the same stream from other threads through logging's handler,
        # and a tick and a stall were once glued into one line between the two writes.
        logger_factory=structlog.WriteLoggerFactory(stream),
        # Not cached, so that a reload's new level reaches loggers already handed out.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, library_event],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiorun and Dask narrate every step at INFO; their warnings are what matter.
    for chatty in ("aiorun", "distributed"):
        logging.getLogger(chatty).setLevel(max(level, logging.WARNING))
    aiorun_log = logging.getLogger("aiorun")
    if not any(isinstance(f, _CleanStopIsNoWarning) for f in aiorun_log.filters):
        aiorun_log.addFilter(_CleanStopIsNoWarning())


def library_event(
    _: Any, __: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """A record of the library's (``loopwatch.events``) as the event it logged.

    Its name and fields, as the daemon's own events read: the message is for others.
    """
    record = event_dict.get("_record")
    found = None if record is None else fields_of(record)
    if found is not None:
        event_dict.pop("logger", None)
        event_dict.update(found)
    return event_dict


class _CleanStopIsNoWarning(logging.Filter):
    """aiorun logs every SIGTERM as a warning ("Stopping the loop"): a clean stop is info."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() == "Stopping the loop":
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger().isEnabledFor(logging.INFO)
        return True
