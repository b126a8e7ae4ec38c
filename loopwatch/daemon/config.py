"""The config model: TOML file + ``LOOPWATCH_`` environment overrides -> frozen DaemonConfig."""

from __future__ import annotations

import importlib.resources
import importlib.util
import inspect
import math
import os
import pickle
import stat
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

import structlog
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)

from loopwatch import targets
from loopwatch.daemon.errors import ConfigError
from loopwatch.daemon.settings import SETTINGS
from loopwatch.errors import StrategyError, TargetError
from loopwatch.strategies import strategy_class

ENV_PREFIX = "LOOPWATCH_"
ENV_CONFIG_PATH = "LOOPWATCH_CONFIG"

log = structlog.get_logger("loopwatch.config")

# The daemon's modules users name in configs, from before it moved under ``loopwatch``.
_RENAMED_MODULES = ("daemon.workloads", "daemon.executors")
_said_renamed: set[str] = set()


def _renamed(path: str) -> str:
    """An import path of the daemon's old top-level name, rewritten (said once per path)."""
    module = path.partition(":")[0]
    if module not in _RENAMED_MODULES:
        return path
    new = "loopwatch." + path
    if path not in _said_renamed:
        _said_renamed.add(path)
        log.warning("deprecated_import_path", old=path, new=new, fix=f'write "{new}" in the config')
    return new


# "module:function"; the daemon's old top-level name still resolves.
ImportPath = Annotated[str, Field(pattern=r"^[\w.]+:[\w.]+$"), AfterValidator(_renamed)]

# Upper bounds keep values within what timers and threads accept (a threshold of 1e10
# overflowed the watchdog's wait); a day is more than any of these needs.
DAY_S = 86_400.0
PositiveFloat = Annotated[float, Field(gt=0, le=DAY_S)]
NonNegativeFloat = Annotated[float, Field(ge=0, le=DAY_S)]


class _Model(BaseModel):
    # No inf or nan anywhere: `interval = inf` would run a worker once and print null.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class DaemonSectionConfig(_Model):
    """``[daemon]``: process-wide choices that need a restart to change."""

    loop: Literal["asyncio", "uvloop"] = "asyncio"
    # The GIL hand-over period (sys.setswitchinterval). A thread holding the GIL (CPU
    # work, a scrape rendering thousands of series) delays the loop by up to this much
    # per turn: 1 ms instead of Python's 5 ms cuts that lag ~4x at no measurable cost.
    switch_interval: Annotated[float, Field(gt=0, le=0.1)] = 0.001
    # Directories put first on sys.path before targets resolve (your own code, not
    # installed); relative ones are read from the config file's directory.
    import_path: tuple[str, ...] = Field(default=(), strict=False)


class TickerConfig(_Model):
    """``[ticker]``: the tutorial's 1 s ticker."""

    interval: PositiveFloat = 1.0


class ProbeConfig(_Model):
    """``[probe]``: the lag probe and the stall watchdog."""

    resolution: Annotated[float, Field(gt=0, le=1.0)] = 0.01
    stall_threshold: Annotated[float, Field(gt=0, le=3600.0)] = 0.1
    # A stall this long dumps every thread's stack from C (faulthandler): it works
    # while native code holds the GIL. 0 disables it.
    dump_after: Annotated[float, Field(ge=0, le=3600.0)] = 10.0

    @model_validator(mode="after")
    def _threshold_above_resolution(self) -> Self:
        if self.stall_threshold <= self.resolution:
            raise ValueError(
                f"stall_threshold ({self.stall_threshold}) must be greater than "
                f"resolution ({self.resolution})"
            )
        return self


class MetricsConfig(_Model):
    """``[metrics]``: the Prometheus endpoint."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9321
    tls_cert: str | None = None
    tls_key: str | None = None
    client_ca: str | None = None

    @model_validator(mode="after")
    def _tls_pairs(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        if self.client_ca is not None and self.tls_cert is None:
            raise ValueError("client_ca needs tls_cert and tls_key (client certificates need TLS)")
        return self


class LoggingConfig(_Model):
    """``[logging]``."""

    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"


class ShutdownConfig(_Model):
    """``[shutdown]``."""

    timeout: NonNegativeFloat = 10.0


class StrategySections(_Model):
    """``[executors.*]``: one section per strategy that has settings, named after it."""


if TYPE_CHECKING:
    ExecutorsConfig = StrategySections
else:
    # Built from the strategy table: a strategy's settings model is its section.
    ExecutorsConfig = create_model(
        "ExecutorsConfig",
        __base__=StrategySections,
        __doc__=StrategySections.__doc__,
        **{name: (model, model()) for name, model in SETTINGS.items()},
    )


def _known_strategy(name: str) -> str:
    try:
        strategy_class(name)
    except StrategyError as exc:
        raise ValueError(exc.message) from None
    return name


StrategyName = Annotated[str, AfterValidator(_known_strategy)]


def _finite(value: dict[str, Any]) -> dict[str, Any]:
    """Refuse inf and nan anywhere in a table of arguments, naming where."""
    stack: list[tuple[str, object]] = list(value.items())
    while stack:
        where, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{where} = {item}: only finite numbers are taken")
        if isinstance(item, dict):
            stack.extend((f"{where}.{k}", v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(item))
    return value


Arguments = Annotated[dict[str, Any], AfterValidator(_finite)]


class WorkerConfig(_Model):
    """One ``[[workers]]`` entry: a target called over and over through a strategy."""

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")]
    target: ImportPath
    kwargs: Arguments = Field(default_factory=dict)
    strategy: StrategyName = "thread"
    concurrency: Annotated[int, Field(ge=1, le=10_000)] = 1
    interval: NonNegativeFloat = 0.0
    timeout: PositiveFloat = 30.0
    executor: ImportPath | None = None
    # A client made once per thread (process, Dask worker thread; once on the loop for
    # on-loop strategies) by setup(**setup_kwargs); the target gets it as first argument.
    setup: ImportPath | None = None
    setup_kwargs: Arguments = Field(default_factory=dict)

    @model_validator(mode="after")
    def _setup_kwargs_only_with_setup(self) -> Self:
        if self.setup_kwargs and self.setup is None:
            raise ValueError('setup_kwargs needs setup = "module:function"')
        return self

    @model_validator(mode="after")
    def _executor_only_with_executor_strategy(self) -> Self:
        needs_factory = strategy_class(self.strategy).needs_factory
        if needs_factory and self.executor is None:
            raise ValueError(f'strategy "{self.strategy}" needs executor = "module:factory"')
        if not needs_factory and self.executor is not None:
            raise ValueError(
                f'executor is only used with strategy "executor", not "{self.strategy}"'
            )
        return self


class DaemonConfig(_Model):
    """The whole validated config; runtime objects are built from it, never the reverse."""

    daemon: DaemonSectionConfig = DaemonSectionConfig()
    ticker: TickerConfig = TickerConfig()
    probe: ProbeConfig = ProbeConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    executors: ExecutorsConfig = ExecutorsConfig()
    # TOML gives a list; strict mode would only accept a tuple.
    workers: tuple[WorkerConfig, ...] = Field(default=(), strict=False)


def default_toml() -> str:
    """The embedded default config (a demo); ``config/default.toml`` is the same, written out."""
    return importlib.resources.files("loopwatch.daemon").joinpath("default.toml").read_text("utf-8")


def config_path_from_env(cli_path: Path | None, environ: Mapping[str, str]) -> Path | None:
    """``-c PATH``, else ``$LOOPWATCH_CONFIG``, else None (the embedded default)."""
    if cli_path is not None:
        return cli_path
    env_path = environ.get(ENV_CONFIG_PATH)
    return Path(env_path) if env_path else None


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> DaemonConfig:
    """Read, override from the environment, validate and cross-check a config.

    Raises ConfigError with one detail line per problem, each naming its key path.
    """
    environ = os.environ if environ is None else environ
    raw = _parse_toml(path)
    overrides = _apply_env_overrides(raw, environ)
    try:
        cfg = _anchor_import_path(DaemonConfig.model_validate(raw), path)
    except ValidationError as exc:
        lines = _format_errors(exc) + _cross_check_parts(raw, path)
        raise ConfigError(_invalid(path, lines, overrides), _name_env(lines, overrides)) from None
    problems = cross_check(cfg)
    if problems:
        raise ConfigError(_invalid(path, problems, overrides), _name_env(problems, overrides))
    return cfg


def _anchor_import_path(cfg: DaemonConfig, path: Path | None) -> DaemonConfig:
    """Relative ``daemon.import_path`` entries are read from the config file's directory."""
    base = Path.cwd() if path is None else path.resolve().parent
    # Normalised (`src/../src/` is `src`): sys.path and the shadowing check see one name.
    anchored = tuple(str((base / entry).resolve()) for entry in cfg.daemon.import_path)
    if anchored == cfg.daemon.import_path:
        return cfg
    daemon = cfg.daemon.model_copy(update={"import_path": anchored})
    return cfg.model_copy(update={"daemon": daemon})


def _source(path: Path | None) -> str:
    return f"config {str(path)!r}" if path is not None else "embedded default config"


def _parse_toml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return tomllib.loads(default_toml())
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {str(path)!r}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends with "(at line L, column C)".
        raise ConfigError(f"config {str(path)!r} is not valid TOML: {exc}") from None


def _apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """Apply ``LOOPWATCH_SECTION__KEY=value``; values are read as TOML values, else strings.

    Returns the key path each variable set (``workers[0].strategy``) -> its name.
    """
    overrides = {}
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG_PATH:
            continue
        keys = [key.lower() for key in name.removeprefix(ENV_PREFIX).split("__")]
        if not all(keys):
            raise ConfigError(f"environment variable {name} has an empty key segment")
        _set_nested(raw, keys, _parse_env_value(value), name)
        loc = tuple(int(k) if k.isdigit() else k for k in keys)
        overrides[format_loc(loc)] = name
    return overrides


def _from_env(line: str, overrides: Mapping[str, str]) -> str | None:
    """The variable that set the key a problem line names, if one did."""
    key = line.partition(": ")[0]
    for path, name in overrides.items():
        if key == path or key.startswith((path + ".", path + "[")):
            return name
    return None


def _name_env(lines: list[str], overrides: Mapping[str, str]) -> list[str]:
    named = []
    for line in lines:
        name = _from_env(line, overrides)
        named.append(f"{line} [set by environment variable {name}]" if name else line)
    return named


def _invalid(path: Path | None, lines: list[str], overrides: Mapping[str, str]) -> str:
    names = sorted({n for n in (_from_env(line, overrides) for line in lines) if n})
    if names and all(_from_env(line, overrides) for line in lines):
        return f"environment variable{'s' if len(names) > 1 else ''} {', '.join(names)} invalid"
    return _source(path) + " is invalid"


def _parse_env_value(value: str) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def _set_nested(node: Any, keys: list[str], value: Any, env_name: str) -> None:
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"environment variable {env_name}: no list item {key!r}")
            index = int(key)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            elif key not in node and keys[i + 1].isdigit():
                raise ConfigError(f"environment variable {env_name}: no list item {keys[i + 1]!r}")
            else:
                node = node.setdefault(key, {})
        else:
            raise ConfigError(f"environment variable {env_name}: {keys[i - 1]!r} is not a table")


def format_loc(loc: tuple[int | str, ...]) -> str:
    """``("workers", 1, "strategy")`` -> ``workers[1].strategy``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _format_errors(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        # Model-level validators append no location; union members add their type names.
        loc = err["loc"]
        msg = err["msg"].removeprefix("Value error, ")
        given = err.get("input")
        shown = "" if isinstance(given, dict) or err["type"] == "missing" else f" (got {given!r})"
        lines.append(f"{format_loc(loc)}: {msg}{shown}")
    return lines


def _cross_check_parts(raw: dict[str, Any], path: Path | None) -> list[str]:
    """What ``cross_check`` says of the parts that passed the schema.

    A config with a schema error is cross-checked too, part by part (the daemon section,
    each worker that validates on its own), so one ``check`` shows every class of error,
    as pydantic shows every schema error. ``sys.path`` is left as it was.
    """
    section = raw.get("daemon", {})
    try:
        daemon = DaemonSectionConfig.model_validate(section)
    except ValidationError:
        daemon = DaemonSectionConfig()
    workers: list[tuple[int, WorkerConfig]] = []
    found = raw.get("workers", [])
    for i, worker in enumerate(found if isinstance(found, list) else []):
        try:
            workers.append((i, WorkerConfig.model_validate(worker)))
        except ValidationError:
            continue  # its schema errors are listed already
    saved_path = list(sys.path)
    try:
        cfg = _anchor_import_path(DaemonConfig(daemon=daemon), path)
        return cross_check(cfg, workers)
    finally:
        sys.path[:] = saved_path


def cross_check(
    cfg: DaemonConfig, workers: list[tuple[int, WorkerConfig]] | None = None
) -> list[str]:
    """Cross-checks that need imports: targets and factories resolve and suit their strategy.

    ``daemon.import_path`` is put on ``sys.path`` first, so targets resolve from it; when
    a problem is found, ``sys.path`` is left as it was. ``workers``: which to check, with
    their index in the file (all of ``cfg``'s by default).
    """
    saved_path = list(sys.path)
    problems = _check_import_path(cfg.daemon.import_path)
    targets.prepend_import_path(cfg.daemon.import_path)
    problems.extend(_check_workers(list(enumerate(cfg.workers)) if workers is None else workers))
    if cfg.daemon.loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        problems.append('daemon.loop: "uvloop" is not installed: pip install "loopwatch[uvloop]"')
    if problems:
        sys.path[:] = saved_path
    return problems


def _check_import_path(directories: tuple[str, ...]) -> list[str]:
    problems = []
    for i, directory in enumerate(directories):
        where = Path(directory)
        if not where.is_dir():
            problems.append(f"daemon.import_path[{i}]: {directory} is not a directory")
            continue
        problems.extend(
            f'daemon.import_path[{i}]: {found} shadows the standard library\'s "{name}": rename '
            f"it (every import of {name}, in the daemon and its pool children, would get it)"
            for name, found in _modules_in(where)
            if name in sys.stdlib_module_names
        )
        mode = where.stat().st_mode
        if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            log.warning(
                "import_path_world_writable",
                directory=directory,
                fix=f"chmod o-w {directory}: anyone on the host can put code the daemon imports",
            )
    return problems


def _modules_in(directory: Path) -> list[tuple[str, Path]]:
    """(top-level module name, file or package) of what ``directory`` makes importable."""
    found = []
    for entry in sorted(directory.iterdir()):
        if entry.is_dir() and (entry / "__init__.py").exists():
            found.append((entry.name, entry))
        elif entry.suffix in (".py", ".pyc") or entry.name.endswith(".so"):
            found.append((entry.name.split(".")[0], entry))
    return found


def _check_workers(workers: list[tuple[int, WorkerConfig]]) -> list[str]:
    problems = []
    first_index: dict[str, int] = {}
    for i, worker in workers:
        where = f"workers[{i}]"
        if worker.name in first_index:
            problems.append(
                f'{where}.name: duplicate worker name "{worker.name}" '
                f"(also workers[{first_index[worker.name]}].name)"
            )
        first_index.setdefault(worker.name, i)
        try:
            fn = targets.resolve(worker.target)
        except TargetError as exc:
            problems.append(f"{where}.target: {exc.message}")
        else:
            problems.extend(_check_target_kind(where, worker, fn))
            if strategy_class(worker.strategy).pickles:
                values = {"target": fn, "kwargs": dict(worker.kwargs)}
                problems.extend(_check_picklable(where, worker.strategy, values))
        if worker.setup is not None:
            problems.extend(_check_setup(where, worker, worker.setup))
        if worker.executor is not None:
            try:
                targets.resolve(worker.executor)
            except TargetError as exc:
                problems.append(f"{where}.executor: {exc.message}")
        problems.extend(_check_requires(where, worker.strategy))
    return problems


def _check_requires(where: str, strategy: str) -> list[str]:
    """An optional dependency the strategy needs, missing: the extra that installs it."""
    requires = strategy_class(strategy).requires
    if requires is None or importlib.util.find_spec(requires[0]) is not None:
        return []
    module, extra = requires
    return [f'{where}.strategy: "{strategy}" needs {module}: pip install "loopwatch[{extra}]"']


def _check_picklable(where: str, strategy: str, values: dict[str, object]) -> list[str]:
    """A process or Dask pool pickles the target and what it is called with, every call."""
    for key, value in values.items():
        try:
            pickle.dumps(value)
        except Exception as exc:  # pickle raises many types: each one means "cannot"
            return [
                (
                    f'{where}.{key}: strategy "{strategy}" sends it to another process, '
                    f"and it cannot be pickled ({type(exc).__name__}: {exc}); use a "
                    "module-level function (not a lambda or a closure) and plain kwargs"
                )
            ]
    return []


def _misfit(fn: targets.Target, *args: Any, **kwargs: Any) -> TypeError | None:
    """Why ``fn(*args, **kwargs)`` would not bind; None if it would or ``fn`` has no signature."""
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        return exc
    except ValueError:
        pass  # some builtins have no signature: the first call will tell
    return None


def _check_setup(where: str, worker: WorkerConfig, path: str) -> list[str]:
    try:
        setup = targets.resolve(path)
    except TargetError as exc:
        return [f"{where}.setup: {exc.message}"]
    misfit = _misfit(setup, **worker.setup_kwargs)
    if misfit is not None:
        return [f'{where}.setup_kwargs: do not fit "{path}": {misfit}']
    if strategy_class(worker.strategy).pickles:
        return _check_picklable(where, worker.strategy, {"setup_kwargs": dict(worker.setup_kwargs)})
    return []


def _check_target_kind(where: str, worker: WorkerConfig, fn: targets.Target) -> list[str]:
    # With a setup, the target's first argument is the resource it made.
    first = () if worker.setup is None else (None,)
    misfit = _misfit(fn, *first, **worker.kwargs)
    if misfit is not None:
        called = "" if worker.setup is None else " called with the setup's resource first"
        return [f'{where}.kwargs: do not fit "{worker.target}"{called}: {misfit}']
    calls = strategy_class(worker.strategy).calls
    if targets.is_async(fn) and calls == "function":
        return [
            (
                f'{where}.target: "{worker.target}" is an async function; strategy '
                f'"{worker.strategy}" would only create a coroutine object that never runs. '
                "Use a synchronous function, or await it in your own async code instead"
            )
        ]
    if calls == "generator" and not targets.is_generator(fn):
        return [
            (
                f'{where}.target: strategy "{worker.strategy}" needs a generator function, and '
                f'"{worker.target}" is a plain function: write it with `yield` at safe points '
                "(the strategy gives the loop back at the first yield after its time slice)"
            )
        ]
    return []
