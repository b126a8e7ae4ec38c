"""Resolve ``"module:function"`` import paths and tell what kind of callable they name."""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
from collections.abc import Callable, Sequence
from types import GeneratorType
from typing import Any, cast

from loopwatch.errors import TargetError

Target = Callable[..., Any]


def prepend_import_path(directories: Sequence[str]) -> None:
    """Put ``directories`` first on ``sys.path``, in order, each once.

    Children started by ``spawn`` or ``forkserver`` inherit ``sys.path`` from the process
    that starts them (the forkserver from the moment it starts), so they import the same.
    """
    for directory in reversed(directories):
        if directory in sys.path:
            sys.path.remove(directory)
        sys.path.insert(0, directory)
    importlib.invalidate_caches()


def resolve(path: str) -> Target:
    """Import ``module:attr`` and return the callable it names.

    Raises TargetError naming the path when the module cannot be imported for any
    reason (missing, relative, a syntax error, any exception raised at import), or the
    attribute is missing or not callable.
    """
    module_name, sep, attr_path = path.partition(":")
    if not sep or not module_name or not attr_path:
        raise TargetError(f'"{path}" is not an import path of the form "module:function"')
    if module_name.startswith("."):
        raise TargetError(f'"{path}" is a relative import path: name the module from the top')
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a user's module may raise anything while it is imported
        raise TargetError(
            f'cannot import module "{module_name}" of "{path}": {type(exc).__name__}: {exc}'
        ) from exc
    obj: Any = module
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise TargetError(f'module "{module_name}" has no attribute "{attr_path}"') from None
    if not callable(obj):
        raise TargetError(f'"{path}" names a {type(obj).__name__}, not a callable')
    return obj  # type: ignore[no-any-return]  # callable() checked it


def unwrap(fn: Target) -> Target:
    """The function under partials and decorators (``functools.wraps``)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return cast("Target", inspect.unwrap(fn))


def is_async(fn: Target) -> bool:
    """True for ``async def`` functions (and async generators), through partials and wrappers."""
    inner = unwrap(fn)
    return inspect.iscoroutinefunction(inner) or inspect.isasyncgenfunction(inner)


def is_generator(fn: Target) -> bool:
    """True for generator functions: their ``yield`` statements are safe points."""
    return inspect.isgeneratorfunction(unwrap(fn))


def drive(fn: Target, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Call ``fn(*args, **kwargs)``; a generator is run to completion, its return value returned.

    Module-level so that process pools can pickle it by reference.
    """
    result = fn(*args, **kwargs)
    if isinstance(result, GeneratorType):
        try:
            while True:
                next(result)
        except StopIteration as stop:
            return stop.value
    if hasattr(type(result), "__await__"):
        # Someone slipped a coroutine past the config check (a decorator that hides it):
        # close it so it does not warn, and fail loudly rather than "succeed" doing nothing.
        close = getattr(result, "close", None)
        if close is not None:
            close()
        raise TypeError(f"{fn!r} returned an awaitable; executor strategies need a sync callable")
    return result


def noop() -> None:
    """Do nothing: used to warm up pools and to measure offload overhead."""
