"""The config model: defaults, every rule with its key path, env overrides, fuzzing."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopwatch.daemon import config as config_module
from loopwatch.daemon.config import DaemonConfig, default_toml, format_loc, load_config
from loopwatch.daemon.errors import ConfigError
from loopwatch.daemon.settings import ThreadSettings, settings_of
from tests.helpers import run_loopwatch, worker_toml

ROOT = Path(__file__).resolve().parent.parent


def errors_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env or {})
    return info.value.details or [info.value.message]


def test_embedded_default_equals_config_default_toml() -> None:
    """``config/default.toml`` is the embedded default written out."""
    assert (ROOT / "config/default.toml").read_text() == default_toml()
    assert load_config(ROOT / "config/default.toml", {}) == load_config(None, {})


def test_embedded_default_runs_the_three_demo_workers() -> None:
    """One I/O worker on thread, one CPU worker on process, one on cooperative."""
    cfg = load_config(None, {})
    assert [(w.target, w.strategy) for w in cfg.workers] == [
        ("loopwatch.daemon.workloads:blocking_io", "thread"),
        ("loopwatch.daemon.workloads:countdown", "process"),
        ("loopwatch.daemon.workloads:countdown", "cooperative"),
    ]
    assert (cfg.metrics.host, cfg.metrics.port) == ("127.0.0.1", 9321)


def test_empty_file_means_every_default_and_no_workers(tmp_path: Path) -> None:
    """Keys a file leaves out take their defaults; ``workers`` defaults to none."""
    path = tmp_path / "empty.toml"
    path.write_text("")
    cfg = load_config(path, {})
    assert cfg == DaemonConfig()
    assert cfg.workers == ()
    assert cfg.probe.resolution == 0.01


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[probe]\nresolution = 'fast'\n",
            "probe.resolution: Input should be a valid number (got 'fast')",
        ),
        ("[probe]\nresolution = 0\n", "probe.resolution: Input should be greater than 0 (got 0)"),
        (
            "[probe]\nresolution = 0.2\nstall_threshold = 0.1\n",
            "probe: stall_threshold (0.1) must be greater than resolution (0.2)",
        ),
        ("[ticker]\ninterval = -1\n", "ticker.interval: Input should be greater than 0 (got -1)"),
        (
            "[metrics]\nport = 70000\n",
            "metrics.port: Input should be less than or equal to 65535 (got 70000)",
        ),
        (
            "[metrics]\nport = '9321'\n",
            "metrics.port: Input should be a valid integer (got '9321')",
        ),
        ("[metrics]\ntls_cert = 'a.crt'\n", "metrics: tls_cert and tls_key must be set together"),
        (
            "[metrics]\nclient_ca = 'ca.crt'\n",
            "metrics: client_ca needs tls_cert and tls_key (client certificates need TLS)",
        ),
        (
            "[logging]\nformat = 'xml'\n",
            "logging.format: Input should be 'auto', 'json' or 'console' (got 'xml')",
        ),
        (
            "[logging]\nlevel = 'loud'\n",
            "logging.level: Input should be 'debug', 'info', 'warning', 'error' or 'critical' (got 'loud')",
        ),
        (
            "[shutdown]\ntimeout = -0.5\n",
            "shutdown.timeout: Input should be greater than or equal to 0 (got -0.5)",
        ),
        (
            "[executors.thread]\nmax_workers = 0\n",
            "executors.thread.max_workers: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            "[executors.process]\nstart_method = 'vfork'\n",
            "executors.process.start_method: Input should be 'fork', 'spawn' or 'forkserver' (got 'vfork')",
        ),
        (
            "[executors.cooperative]\nyield_every = 0\n",
            "executors.cooperative.yield_every: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            "[daemon]\nloop = 'trio'\n",
            "daemon.loop: Input should be 'asyncio' or 'uvloop' (got 'trio')",
        ),
        ("[surprise]\nx = 1\n", "surprise: Extra inputs are not permitted"),
        (
            "[probe]\nresolutoin = 0.01\n",
            "probe.resolutoin: Extra inputs are not permitted (got 0.01)",
        ),
    ],
)
def test_section_rules_name_the_key_path(tmp_path: Path, text: str, expected: str) -> None:
    """Each rule reports its key path, the rule and the value given."""
    assert expected in errors_of(tmp_path, text)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"strategy": "teleport"},
            "workers[0].strategy: Input should be 'blocking', 'thread', 'process', 'cooperative', 'executor', 'dask' or 'auto' (got 'teleport')",
        ),
        ({"name": None}, "workers[0].name: Field required"),
        ({"name": "has space"}, "workers[0].name: String should match pattern"),
        ({"target": "no_colon"}, "workers[0].target: String should match pattern"),
        (
            {"concurrency": 0},
            "workers[0].concurrency: Input should be greater than or equal to 1 (got 0)",
        ),
        ({"timeout": 0}, "workers[0].timeout: Input should be greater than 0 (got 0)"),
        (
            {"interval": -1},
            "workers[0].interval: Input should be greater than or equal to 0 (got -1)",
        ),
        (
            {"strategy": "executor"},
            'workers[0]: strategy "executor" needs executor = "module:factory"',
        ),
        (
            {"executor": "loopwatch.daemon.executors:daemon_thread_executor"},
            'workers[0]: executor is only used with strategy "executor", not "process"',
        ),
        (
            {"target": "loopwatch.daemon.nowhere:fn"},
            'workers[0].target: cannot import module "loopwatch.daemon.nowhere" of "loopwatch.daemon.nowhere:fn"',
        ),
        (
            {"target": "loopwatch.daemon.workloads:missing"},
            'workers[0].target: module "loopwatch.daemon.workloads" has no attribute "missing"',
        ),
        (
            {"target": "loopwatch.daemon.workloads:CHUNK"},
            'workers[0].target: "loopwatch.daemon.workloads:CHUNK" names a int, not a callable',
        ),
        (
            {"kwargs": {"m": 1}},
            "workers[0].kwargs: do not fit \"loopwatch.daemon.workloads:countdown\": got an unexpected keyword argument 'm'",
        ),
        (
            {"target": "tests.targets:async_target", "strategy": "thread"},
            'workers[0].target: "tests.targets:async_target" is an async function; strategy "thread" would only create a coroutine object that never runs.',
        ),
        (
            {"target": "tests.targets:async_target", "strategy": "process"},
            'strategy "process" would only create a coroutine object that never runs',
        ),
        (
            {"target": "tests.targets:async_target", "strategy": "blocking"},
            'strategy "blocking" would only create a coroutine object that never runs',
        ),
        (
            {
                "target": "loopwatch.daemon.workloads:http_get",
                "kwargs": {"url": "http://x"},
                "strategy": "cooperative",
            },
            'workers[0].target: strategy "cooperative" needs a generator function, and "loopwatch.daemon.workloads:http_get" is a plain function: write it with `yield` at safe points',
        ),
        (
            {"strategy": "executor", "executor": "loopwatch.daemon.executors:nothing"},
            'workers[0].executor: module "loopwatch.daemon.executors" has no attribute "nothing"',
        ),
    ],
)
def test_worker_rules_name_the_key_path(
    tmp_path: Path, fields: dict[str, Any], expected: str
) -> None:
    """Each worker rule reports ``workers[i].key`` and what is wrong."""
    found = errors_of(tmp_path, worker_toml(**fields))
    assert any(expected in line for line in found), found


def test_duplicate_worker_names_point_at_both(tmp_path: Path) -> None:
    """A duplicate name names the second entry and the first."""
    text = worker_toml(name="a") + worker_toml(name="b") + worker_toml(name="a")
    assert errors_of(tmp_path, text) == [
        'workers[2].name: duplicate worker name "a" (also workers[0].name)'
    ]


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    """Several mistakes: all of them, not the first only."""
    text = "[probe]\nresolution = -1\n[ticker]\ninterval = 'x'\n" + worker_toml(strategy="nope")
    assert len(errors_of(tmp_path, text)) == 3


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    """A syntax error says where."""
    path = tmp_path / "c.toml"
    path.write_text("[probe]\nresolution = 0.01\nstall_threshold = = 2\n")
    with pytest.raises(ConfigError, match=r"is not valid TOML: .*line 3"):
        load_config(path, {})


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    """A missing file is named."""
    with pytest.raises(ConfigError, match="config file not found: '.*/absent.toml'"):
        load_config(tmp_path / "absent.toml", {})


def test_env_overrides_nested_keys_and_list_items(tmp_path: Path) -> None:
    """``LOOPWATCH_METRICS__PORT=9400`` and ``LOOPWATCH_WORKERS__0__STRATEGY=thread``."""
    path = tmp_path / "c.toml"
    path.write_text(worker_toml())
    env = {
        "LOOPWATCH_METRICS__PORT": "9400",
        "LOOPWATCH_METRICS__HOST": "::1",
        "LOOPWATCH_WORKERS__0__STRATEGY": "thread",
        "LOOPWATCH_EXECUTORS__THREAD__MAX_WORKERS": "8",
        "LOOPWATCH_CONFIG": "ignored.toml",
        "OTHER": "x",
    }
    cfg = load_config(path, env)
    assert cfg.metrics.port == 9400
    assert cfg.metrics.host == "::1"
    assert cfg.workers[0].strategy == "thread"
    assert settings_of("thread", cfg.executors) == ThreadSettings(max_workers=8)


def test_env_override_errors_name_the_variable(tmp_path: Path) -> None:
    """A bad override is reported like a bad file value, or names the variable."""
    expected = (
        "metrics.port: Input should be a valid integer (got 'high') "
        "[set by environment variable LOOPWATCH_METRICS__PORT]"
    )
    assert errors_of(tmp_path, "", {"LOOPWATCH_METRICS__PORT": "high"}) == [expected]
    assert errors_of(tmp_path, "", {"LOOPWATCH_WORKERS__3__NAME": "x"}) == [
        "environment variable LOOPWATCH_WORKERS__3__NAME: no list item '3'"
    ]


def test_format_loc() -> None:
    """Locations read like the TOML keys."""
    assert format_loc(("workers", 1, "strategy")) == "workers[1].strategy"
    assert format_loc(()) == "(top level)"


toml_scalars = st.one_of(
    st.integers(-(2**40), 2**40), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12), st.booleans(),
)  # fmt: skip
keys = st.sampled_from(
    ["daemon", "ticker", "probe", "metrics", "logging", "shutdown", "executors", "workers",
     "interval", "resolution", "port", "host", "level", "format", "name", "target",
     "strategy", "thread", "process", "max_workers", "timeout", "kwargs", "bogus"]
)  # fmt: skip
documents = st.recursive(
    st.dictionaries(keys, toml_scalars, max_size=4),
    lambda inner: st.dictionaries(keys, st.one_of(inner, st.lists(inner, max_size=3)), max_size=4),
    max_leaves=20,
)


def _dump(doc: dict[str, object]) -> str:
    """Minimal TOML writer: inline tables and arrays on one line per top key."""

    def value(v: object) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f'"{k}" = {value(x)}' for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.encode("unicode_escape").decode().replace('"', '\\"') + '"'
        return repr(v)

    return "\n".join(f'"{k}" = {value(v)}' for k, v in doc.items())


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(documents)
def test_fuzzed_documents_are_valid_or_a_config_error(
    tmp_path: Path, doc: dict[str, object]
) -> None:
    """Random documents never escape as anything but a valid config or a ConfigError."""
    path = tmp_path / "fuzz.toml"
    text = _dump(doc)
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return
    path.write_text(text)
    try:
        cfg = load_config(path, {})
    except ConfigError as exc:
        assert exc.message == f"config {str(path)!r} is invalid"
        assert exc.details
        assert all(": " in line for line in exc.details), exc.details
    else:
        assert set(doc) <= set(DaemonConfig.model_fields)  # nothing unknown got through
        assert cfg == DaemonConfig.model_validate(tomllib.loads(text))


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=200))
def test_fuzzed_bytes_are_valid_or_a_config_error(tmp_path: Path, data: bytes) -> None:
    """Arbitrary bytes: a ConfigError (or, rarely, a valid empty-ish config), never a crash."""
    path = tmp_path / "fuzz.toml"
    path.write_bytes(data)
    try:
        cfg = load_config(path, {})
    except ConfigError as exc:
        assert str(path) in exc.message
    else:
        # read_text reads newlines universally (a lone CR is a newline), as load_config does
        assert cfg == DaemonConfig.model_validate(tomllib.loads(path.read_text("utf-8")))


@pytest.mark.parametrize("strategy", ["process", "dask"])
def test_targets_a_pool_cannot_pickle_are_refused_at_load(tmp_path: Path, strategy: str) -> None:
    """A module-level lambda on process or dask: refused with the key, not failing each call."""
    found = errors_of(
        tmp_path, worker_toml("w", "tests.targets:unpicklable_lambda", strategy, {"n": 2})
    )
    assert any(
        line.startswith("workers[0].target: strategy") and "cannot be pickled" in line
        for line in found
    ), found
    valid = tmp_path / "thread.toml"
    valid.write_text(worker_toml("w", "tests.targets:unpicklable_lambda", "thread"))
    assert load_config(valid, {}).workers[0].strategy == "thread"  # threads need no pickling


def test_an_invalid_environment_override_names_the_variable(tmp_path: Path) -> None:
    """Not "embedded default config is invalid": the variable that set the bad value."""
    with pytest.raises(ConfigError) as info:
        load_config(None, {"LOOPWATCH_METRICS__PORT": "70000"})
    assert info.value.message == "environment variable LOOPWATCH_METRICS__PORT invalid"
    assert info.value.details == [
        (
            "metrics.port: Input should be less than or equal to 65535 (got 70000) "
            "[set by environment variable LOOPWATCH_METRICS__PORT]"
        )
    ]
    with pytest.raises(ConfigError) as info:
        load_config(None, {"LOOPWATCH_WORKERS__0__TARGET": "nowhere:fn"})
    assert info.value.message == "environment variable LOOPWATCH_WORKERS__0__TARGET invalid"
    assert "[set by environment variable LOOPWATCH_WORKERS__0__TARGET]" in info.value.details[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[ticker]\ninterval = inf\n", "ticker.interval: Input should be a finite number"),
        (
            "[probe]\nstall_threshold = nan\n",
            "probe.stall_threshold: Input should be a finite number",
        ),
        (
            "[probe]\nstall_threshold = 1e10\n",
            "probe.stall_threshold: Input should be less than or equal to 3600",
        ),
        ("[shutdown]\ntimeout = inf\n", "shutdown.timeout: Input should be a finite number"),
        (
            "[probe]\ndump_after = -1.0\n",
            "probe.dump_after: Input should be greater than or equal to 0",
        ),
    ],
)
def test_non_finite_and_absurd_numbers_are_refused_with_their_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    """inf, nan and values timers cannot take: refused by key path, never run."""
    found = errors_of(tmp_path, text)
    assert any(line.startswith(expected) for line in found), found


def test_inf_in_a_workers_kwargs_is_refused_with_its_key(tmp_path: Path) -> None:
    found = errors_of(tmp_path, worker_toml(kwargs="n = 1, deep = { x = [1.0, inf] }"))
    assert any(
        line.startswith("workers[0].kwargs:") and "deep.x[1] = inf" in line for line in found
    ), found


def test_a_gil_meter_sample_interval_it_cannot_afford_is_refused(tmp_path: Path) -> None:
    found = errors_of(tmp_path, "[executors.auto]\nsample_interval = 1e-9\n")
    assert any(
        line.startswith(
            "executors.auto.sample_interval: Input should be greater than or equal to 0.01"
        )
        for line in found
    ), found


def test_a_worker_interval_of_inf_is_refused(tmp_path: Path) -> None:
    """``interval = inf`` used to run a worker once and print null."""
    found = errors_of(tmp_path, worker_toml(interval=float("inf")))
    assert any(
        line.startswith("workers[0].interval: Input should be a finite number") for line in found
    ), found


def test_a_config_with_problems_leaves_sys_path_as_it_was(tmp_path: Path) -> None:
    """A reload that fails changes nothing, sys.path included."""
    src = tmp_path / "src"
    src.mkdir()
    path = tmp_path / "bad.toml"
    path.write_text(
        '[daemon]\nimport_path = ["src"]\n[[workers]]\nname = "w"\ntarget = "lw_path_probe:f"\n'
    )
    before = list(sys.path)
    with pytest.raises(ConfigError, match="lw_path_probe"):
        load_config(path, {})
    assert sys.path == before
    (src / "lw_path_probe.py").write_text("def f() -> None: ...\n")
    cfg = load_config(path, {})
    assert cfg.daemon.import_path == (str(src),)
    assert sys.path[0] == str(src)
    sys.path[:] = before
    del sys.modules["lw_path_probe"]


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        ({"setup": "no_such_mod:make"}, 'workers[0].setup: cannot import module "no_such_mod"'),
        (
            {"setup": "tests.targets:open_db", "setup_kwargs": {"nope": 1}},
            'workers[0].setup_kwargs: do not fit "tests.targets:open_db"',
        ),
        (
            {"setup_kwargs": {"path": "x"}},
            'workers[0]: setup_kwargs needs setup = "module:function"',
        ),
        (
            {
                "setup": "tests.targets:http_session",
                "target": "loopwatch.daemon.workloads:countdown",
            },
            'workers[0].kwargs: do not fit "loopwatch.daemon.workloads:countdown" called with the setup\'s resource first',
        ),
    ],
)
def test_setup_errors_name_the_key(tmp_path: Path, keys: dict[str, object], error: str) -> None:
    target = keys.pop("target", "tests.targets:write_row")
    text = worker_toml(
        "w", str(target), "thread", kwargs="n = 1" if "countdown" in str(target) else None, **keys
    )
    assert any(line.startswith(error) for line in errors_of(tmp_path, text)), errors_of(
        tmp_path, text
    )


def test_the_daemons_old_import_paths_still_resolve_said_once(tmp_path: Path) -> None:
    """Configs written before the daemon moved under ``loopwatch`` keep working."""
    path = tmp_path / "old.toml"
    path.write_text(
        worker_toml("a", "daemon.workloads:countdown", "thread", {"n": 10})
        + worker_toml("b", "daemon.workloads:countdown", "thread", {"n": 10})
        + worker_toml(
            "c",
            "daemon.workloads:countdown",
            "executor",
            {"n": 10},
            executor="daemon.executors:daemon_thread_executor",
        )
    )
    config_module._said_renamed.clear()  # said once per process: start afresh
    with structlog.testing.capture_logs() as logs:
        cfg = load_config(path)
        load_config(path)
    assert [w.target for w in cfg.workers] == ["loopwatch.daemon.workloads:countdown"] * 3
    assert cfg.workers[2].executor == "loopwatch.daemon.executors:daemon_thread_executor"
    said = [e for e in logs if e["event"] == "deprecated_import_path"]
    assert {e["old"] for e in said} == {
        "daemon.workloads:countdown",
        "daemon.executors:daemon_thread_executor",
    }
    assert len(said) == 2  # once per path, however often it is loaded
    assert all(e["new"] == "loopwatch." + e["old"] for e in said)


def test_a_module_that_shadows_the_standard_library_is_refused_naming_it(tmp_path: Path) -> None:
    """A stray json.py in an import_path directory broke every process child at start-up."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "json.py").write_text("# a stray file\n")
    (src / "shop.py").write_text("def f() -> None: ...\n")
    path = tmp_path / "c.toml"
    path.write_text('[daemon]\nimport_path = ["src"]\n' + worker_toml("w", "shop:f", "thread"))
    before = list(sys.path)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert sys.path == before
    assert info.value.details == [
        (
            f'daemon.import_path[0]: {src / "json.py"} shadows the standard library\'s "json": '
            "rename it (every import of json, in the daemon and its pool children, would get it)"
        )
    ]
    out = run_loopwatch("check", "-c", str(path))
    assert out.returncode == 78
    assert 'shadows the standard library\'s "json"' in out.stderr


def test_import_path_entries_are_normalised(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    path = tmp_path / "c.toml"
    path.write_text('[daemon]\nimport_path = ["./src/pkg/../", "src//"]\n')
    before = list(sys.path)
    try:
        cfg = load_config(path, {})
        assert cfg.daemon.import_path == (str(src), str(src))
    finally:
        sys.path[:] = before


def test_a_world_writable_import_path_is_warned_about(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    src.chmod(0o777)
    path = tmp_path / "c.toml"
    path.write_text('[daemon]\nimport_path = ["src"]\n')
    before = list(sys.path)
    try:
        with structlog.testing.capture_logs() as logs:
            load_config(path, {})
    finally:
        sys.path[:] = before
    [warning] = [e for e in logs if e["event"] == "import_path_world_writable"]
    assert warning["directory"] == str(src)
