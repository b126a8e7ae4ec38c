"""Command line: args -> config -> run/check/top/bench. The only place with exit codes."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import io
import logging
import math
import os
import resource
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import prometheus_client
import structlog

import loopwatch
from loopwatch.daemon import __version__
from loopwatch.daemon.config import DaemonConfig, MetricsConfig, config_path_from_env, load_config
from loopwatch.daemon.errors import ConfigError, EndpointError, LoopwatchError
from loopwatch.threadpool import RUNNING

EXIT_OK = 0
EXIT_USAGE = 2
# Descriptors a daemon takes with no client connected: pipes of the native dump and its
# reader, a process pool's, the listener, the loop's selector and self-pipe, the GIL
# meter's /proc files (measured ~20 with one of each); twice that, for some headroom.
MIN_OPEN_FILES = 64
FD_LIMIT_FIX = "raise it: ulimit -n, or LimitNOFILE= in the unit (deploy/ sets 4096)"
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: port taken, a strategy cannot start; a restart may succeed
EXIT_CONFIG = 78  # EX_CONFIG: systemd's RestartPreventExitStatus keeps it from restart-looping


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loopwatch",
        description="Run synchronous work from asyncio and prove the event loop stays free.",
    )
    parser.add_argument("--version", action="version", version=f"loopwatch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("run", "run the daemon until SIGTERM/SIGINT"),
        ("check", "validate a config and print the effective config"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument(
            "-c", "--config", type=Path, metavar="PATH",
            help="config file (default: $LOOPWATCH_CONFIG, else the embedded default)",
        )  # fmt: skip
    top = commands.add_parser(
        "top", help="a live view of a running daemon", description="a live view of a running daemon"
    )
    source = top.add_mutually_exclusive_group()
    source.add_argument(
        "-c", "--config", type=Path, metavar="PATH",
        help="the daemon's config, for its endpoint (default: as for run)",
    )  # fmt: skip
    source.add_argument(
        "--url", metavar="URL", help="a metrics endpoint, e.g. http://host:9321/metrics"
    )
    top.add_argument("--once", action="store_true", help="print one snapshot and exit")
    top.add_argument(
        "--interval", type=_positive_seconds, default=1.0, metavar="S",
        help="seconds between scrapes (default 1)",
    )  # fmt: skip
    bench = commands.add_parser("bench", help="benchmark the strategies on this machine")
    bench.add_argument("--quick", action="store_true", help="shorter runs (under 3 minutes)")
    bench.add_argument("--out", type=Path, default=Path("bench-results"), metavar="DIR")
    bench.add_argument("--target", metavar="MOD:FN", help="benchmark your own function")
    bench.add_argument("--kwargs", default="{}", metavar="JSON", help="kwargs for --target")
    bench.add_argument("--seconds", type=float, default=None, help="seconds per cell")
    bench.add_argument("--overhead", action="store_true", help="only the offload-overhead part")
    return parser


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.05 <= value <= 3600:  # also false for nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0.05 to 3600")
    return value


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the ``loopwatch`` console script."""
    sys.exit(run_cli(argv))


def run_cli(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "bench":
        from loopwatch.daemon.bench.command import run_bench  # noqa: PLC0415 - rich/matplotlib only here

        try:
            run_bench(args)
        except ConfigError as exc:
            print(f"loopwatch: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        return EXIT_OK
    if args.command == "top" and args.url is not None:
        return _top(args, None)
    return _with_config(args)


def _with_config(args: argparse.Namespace) -> int:
    path = config_path_from_env(args.config, os.environ)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(f"loopwatch: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        print(cfg.model_dump_json(indent=2))
        return EXIT_OK
    if args.command == "top":
        return _top(args, cfg.metrics)
    return _run_daemon(cfg, path)


def _top(args: argparse.Namespace, metrics: MetricsConfig | None) -> int:
    from rich.console import Console  # noqa: PLC0415 - only top draws

    from loopwatch.daemon import top  # noqa: PLC0415

    if metrics is not None and not metrics.port:
        print("loopwatch top: metrics.port is 0 in this config: no endpoint", file=sys.stderr)
        return EXIT_CONFIG
    url = args.url if metrics is None else top.url_from_config(metrics)
    reader = top.Reader(url, cafile=None if metrics is None else metrics.tls_cert)
    # Piped (`top --once | grep`), nothing is cut at a terminal's width: there is none.
    console = Console() if sys.stdout.isatty() else Console(width=top.PIPED_WIDTH)
    try:
        view = top.first_view(reader, args.interval)
    except top.ScrapeError as exc:
        print(
            f"loopwatch top: cannot read {url}: {exc}. Is the daemon running (`loopwatch run`)?",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return EXIT_OK
    if args.once:
        console.print(view.render())
        return EXIT_OK
    with contextlib.suppress(KeyboardInterrupt):
        top.live(reader, view, args.interval, console)
    return EXIT_OK


def exit_code_for(failure: LoopwatchError | None) -> int:
    """The exit code of a run that ended with ``failure`` (None: a clean stop)."""
    if failure is None:
        return EXIT_OK
    if isinstance(failure, ConfigError):
        return EXIT_CONFIG
    return EXIT_UNAVAILABLE


def _run_daemon(cfg: DaemonConfig, path: Path | None) -> int:
    import aiorun  # noqa: PLC0415

    from loopwatch.daemon.app import build_app  # noqa: PLC0415
    from loopwatch.daemon.logs import configure_logging  # noqa: PLC0415

    configure_logging(cfg.logging)
    # Process-wide, so here, at the process's entry: `_created` series double the series
    # count and no alert or panel uses them.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    sys.setswitchinterval(cfg.daemon.switch_interval)
    # systemd's watchdog kills a stuck service with SIGABRT: every thread's stack reaches
    # the journal first, written from C (it works while native code holds the GIL).
    try:
        faulthandler.enable(file=sys.stderr, all_threads=True)
    except (AttributeError, ValueError, io.UnsupportedOperation):
        faulthandler.enable(file=sys.__stderr__ or 2, all_threads=True)  # stderr replaced
    log = structlog.get_logger("loopwatch")
    too_few = _raise_fd_limit()
    if too_few is not None:
        log.error("startup_failed", error=too_few, fix=FD_LIMIT_FIX)
        return EXIT_UNAVAILABLE
    app = build_app(cfg, config_path=path, environ=os.environ)
    try:
        if app.endpoint is not None:
            app.endpoint.start()
    except (ConfigError, EndpointError) as exc:
        log.error(
            "startup_failed", error=str(exc), fix="free the port or fix [metrics], then restart"
        )
        return exit_code_for(exc)
    uvloop = cfg.daemon.loop == "uvloop"
    aiorun.run(
        app.run(),
        # Our own asyncio loop, whose selector times its waits: loop utilization.
        loop=None if uvloop else loopwatch.new_event_loop(),
        shutdown_callback=app.shutdown,
        use_uvloop=uvloop,
        timeout_task_shutdown=5.0,
    )
    code = exit_code_for(app.failure)
    _leave_stragglers(log, code)
    return code


def _raise_fd_limit() -> str | None:
    """Raise the soft limit of file descriptors to the hard one (systemd: LimitNOFILE).

    Every metrics connection takes a descriptor; the default soft limit of 1024 is the
    first thing a crowd of slow clients would exhaust. Returns why the daemon cannot
    run when even the hard limit is below ``MIN_OPEN_FILES``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < MIN_OPEN_FILES:
        return f"the open files limit (RLIMIT_NOFILE) is {soft}, below {MIN_OPEN_FILES}"
    return None


def _leave_stragglers(log: structlog.typing.FilteringBoundLogger, code: int) -> None:
    """Exit with ``code`` past threads that cannot be stopped (a pool thread stuck in a target).

    The interpreter would join them at exit and hang; their calls were counted and
    cancelled already, so they are logged by name and left behind.
    """
    busy = sorted(name for name, _ in RUNNING.values())  # never hold the exit: daemon threads
    if busy:
        log.warning("shutdown_stragglers", threads=busy)
    stuck = [
        t.name for t in threading.enumerate()
        if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]  # fmt: skip
    if stuck:
        log.warning("shutdown_stragglers", threads=stuck)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
