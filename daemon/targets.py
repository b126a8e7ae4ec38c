"""Resolve ``"module:function"`` import paths and tell what kind of callable they name."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from types import GeneratorType
from typing import Any, cast

from daemon.errors import ConfigError

Target = Callable[..., Any]


def resolve(path: str) -> Target:
    """Import ``module:attr`` and return the callable it names.

    Raises ConfigError naming the path when the module or attribute is missing
    or the attribute is not callable.
    """
    module_name, sep, attr_path = path.partition(":")
    if not sep or not module_name or not attr_path:
        raise ConfigError(f'"{path}" is not an import path of the form "module:function"')
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f'cannot import module "{module_name}" of "{path}": {exc}') from exc
    obj: Any = module
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise ConfigError(f'module "{module_name}" has no attribute "{attr_path}"') from None
    if not callable(obj):
        raise ConfigError(f'"{path}" names a {type(obj).__name__}, not a callable')
    return obj  # type: ignore[no-any-return]  # callable() checked it


def _unwrap(fn: Target) -> Target:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return cast("Target", inspect.unwrap(fn))


def is_async(fn: Target) -> bool:
    """True for ``async def`` functions (and async generators), through partials and wrappers."""
    inner = _unwrap(fn)
    return inspect.iscoroutinefunction(inner) or inspect.isasyncgenfunction(inner)


def is_generator(fn: Target) -> bool:
    """True for generator functions: their ``yield`` statements are safe points."""
    return inspect.isgeneratorfunction(_unwrap(fn))


def drive(fn: Target, kwargs: dict[str, Any]) -> Any:
    """Call ``fn(**kwargs)``; a generator is run to completion and its return value returned.

    Module-level so that process pools can pickle it by reference.
    """
    result = fn(**kwargs)
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
