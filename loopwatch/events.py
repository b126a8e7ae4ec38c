"""loopwatch's log events, through the standard library's ``logging``.

Every event goes to a logger under ``loopwatch`` as a record whose message reads alone
(``stall: 0.302 s (wait) at app.py:12 fetch_report``), with the event's name as its
``event`` attribute and each field as an attribute of its own (``extra``): a JSON
formatter, Sentry or an application's handlers get them with no set-up. The daemon
renders the same records with structlog (``loopwatch.daemon.logs``).
"""

from __future__ import annotations

import logging
from typing import Any

# Attributes a LogRecord has already: a field of that name goes in ``loopwatch`` only.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


def emit(
    logger: logging.Logger,
    level: int,
    event: str,
    message: str,
    *,
    exc_info: bool = False,
    **fields: Any,
) -> None:
    """Log ``event`` at ``level``: ``message`` for a reader, ``fields`` for a program.

    Every field is also in the record's ``loopwatch`` attribute, as a dict.
    """
    if not logger.isEnabledFor(level):
        return
    extra = {key: value for key, value in fields.items() if key not in _RESERVED}
    extra["event"] = event
    extra["loopwatch"] = fields
    logger.log(level, "%s", message, extra=extra, exc_info=exc_info, stacklevel=2)


def fields_of(record: logging.LogRecord) -> dict[str, Any] | None:
    """The event name and fields of a record ``emit`` made; None for any other record."""
    fields = getattr(record, "loopwatch", None)
    if not isinstance(fields, dict):
        return None
    return {"event": getattr(record, "event", record.getMessage()), **fields}
