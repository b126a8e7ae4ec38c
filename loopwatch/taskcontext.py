"""The ``contextvars.Context`` a task runs in, readable from the watchdog's thread.

A stall's span is the child of the span current in the blocked task. Python 3.12 gives
``Task.get_context()``; 3.11's C task keeps its context to itself, so there the contexts
are remembered by a task factory, set on loops that have none (``remember_contexts``).
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import weakref
from typing import Any

# Python 3.11 only: each task's context, kept as long as the task lives.
_CONTEXTS: weakref.WeakKeyDictionary[asyncio.Future[Any], contextvars.Context] = (
    weakref.WeakKeyDictionary()
)


def context_of(task: asyncio.Future[Any]) -> contextvars.Context | None:
    """The context ``task`` runs its steps in; None where it cannot be known."""
    get_context = getattr(task, "get_context", None)
    if get_context is not None:
        context: contextvars.Context = get_context()
        return context
    return _CONTEXTS.get(task)


def remember_contexts(loop: asyncio.AbstractEventLoop) -> bool:
    """On Python 3.11, have ``loop``'s tasks made by a factory that keeps their contexts.

    Only where the loop has no factory of its own (it would be replaced); False then.
    """
    if sys.version_info >= (3, 12):
        return True
    if loop.get_task_factory() not in (None, _factory):
        return False
    loop.set_task_factory(_factory)
    return True


def _factory(
    loop: asyncio.AbstractEventLoop,
    coro: Any,  # a coroutine (a generator too, up to 3.11's typeshed)
    *,
    context: contextvars.Context | None = None,
) -> asyncio.Task[Any]:
    context = contextvars.copy_context() if context is None else context
    task = asyncio.Task(coro, loop=loop, context=context)
    _CONTEXTS[task] = context
    return task
