"""The ``dask`` strategy: calls run on a Dask cluster (``loopwatch[dask]``).

The client runs in synchronous mode, on its own IO thread; each call is a Dask future
bridged to a ``concurrent.futures`` one (so that a call given up on can be cancelled on
the cluster): the caller's loop only waits on futures, so neither the scheduler's
chatter nor (de)serialization ever runs on it.
``distributed`` is imported only when a strategy connects. ``pure=False`` because
Dask would otherwise cache the result of identical calls and never run them again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
from collections.abc import Collection
from typing import Any, Self

from loopwatch.errors import MissingExtraError, SchedulerUnavailableError, StrategyError
from loopwatch.events import emit
from loopwatch.occupant import Occupant, run_timed
from loopwatch.strategies.base import Call, override
from loopwatch.strategies.pool import Expiry, PoolStrategy

SCHEDULER_FIX = "start the Dask scheduler or fix executors.dask.address, then restart"

log = logging.getLogger("loopwatch.dask")


def _settle(local: concurrent.futures.Future[Any], remote: Any) -> None:
    """Pass a Dask future's outcome on (in the client's callback thread)."""
    if local.done():
        return  # given up on (a timeout): the outcome is nobody's any more
    try:
        if remote.status == "finished":
            local.set_result(remote.result())
        elif remote.status == "cancelled":
            local.cancel()
        else:
            local.set_exception(remote.exception())
    except concurrent.futures.InvalidStateError:
        pass  # given up on meanwhile


def _release(remote: Any, local: concurrent.futures.Future[Any]) -> None:
    """A call given up on (timeout, cancellation) is cancelled on the cluster too.

    Off the loop: ``Future.cancel`` of a synchronous client waits for the scheduler. A
    queued task then never runs; a running one cannot be interrupted by Dask: it ends in
    its worker thread and its result is dropped.
    """
    if local.cancelled() and not remote.done():
        threading.Thread(
            target=_cancel_quietly, args=(remote,), name="loopwatch-dask-cancel", daemon=True
        ).start()


def _cancel_quietly(remote: Any) -> None:
    with contextlib.suppress(Exception):
        remote.cancel()


CONNECT_TIMEOUT_S = 10.0


class DaskStrategy(PoolStrategy):
    """A Dask ``Client`` executor; ``address = ""`` starts an embedded LocalCluster of processes."""

    name = "dask"
    # Its settings: loopwatch.daemon.settings (the daemon's [executors.dask] section).
    has_settings = True
    pickles = True
    requires = ("distributed", "dask")

    def __init__(
        self, *, address: str = "", n_workers: int = 2, threads_per_worker: int = 1
    ) -> None:
        self._address = address
        # Embedded: every worker thread of the cluster; remote: unknown.
        self.capacity = None if address else n_workers * threads_per_worker
        self.in_flight = 0
        self.queue_wait = None
        self._expiry = Expiry()
        self._n_workers = n_workers
        self._threads_per_worker = threads_per_worker
        self.closed = False
        self._client: Any = None
        self._cluster: Any = None
        self._lock = threading.Lock()
        self._reconnecting = False

    @override
    @classmethod
    def build(cls, settings: Any, *, occupant: Occupant, factory: str | None = None) -> Self:
        return cls(
            address=settings.address,
            n_workers=settings.n_workers,
            threads_per_worker=settings.threads_per_worker,
        )

    @override
    async def close_clients(self, owners: Collection[str], timeout: float) -> None:
        """Nothing to do here: each Dask worker thread closes its clients when it ends."""

    @property
    def address(self) -> str:
        """The scheduler's address (the embedded cluster's, once started)."""
        return str(self._client.scheduler.address) if self._client is not None else self._address

    @override
    async def start(self) -> None:
        """Connect (and start the embedded cluster) in a thread: it takes seconds."""
        try:
            await asyncio.to_thread(self._connect)
        except (OSError, TimeoutError) as exc:
            raise SchedulerUnavailableError(
                f"cannot reach Dask scheduler {self._address!r}: {exc}", fix=SCHEDULER_FIX
            ) from exc
        emit(
            log,
            logging.INFO,
            "dask_connected",
            f"connected to the Dask scheduler {self.address}",
            scheduler=self.address,
            embedded=self._cluster is not None,
        )

    def _connect(self) -> None:
        try:
            from distributed import Client, LocalCluster  # noqa: PLC0415 - optional extra
        except ImportError as exc:
            raise MissingExtraError("dask", "dask.distributed", "dask") from exc
        if self.closed:
            raise StrategyError("dask strategy is closed: not connecting")
        if self._address:
            client = Client(self._address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        else:
            self._cluster = LocalCluster(
                n_workers=self._n_workers,
                threads_per_worker=self._threads_per_worker,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.WARNING,
            )
            try:
                client = Client(self._cluster, set_as_default=False)
            except BaseException:
                # A cluster whose client never came up would leak its worker processes.
                self._cluster.close()
                self._cluster = None
                raise
        with self._lock:
            if self.closed:  # closed while we connected (SIGTERM during start-up)
                client.close()
                if self._cluster is not None:
                    self._cluster.close()
                    self._cluster = None
                raise StrategyError("dask strategy closed while connecting")
            self._client = client

    @override
    def _submit(self, call: Call) -> concurrent.futures.Future[Any]:
        client = self._client
        if client is None or client.status != "running":
            # Submitted now, the call would wait silently for a scheduler that may never
            # return; fail it while the client reconnects in the background.
            status = None if client is None else client.status
            if status in (None, "closed", "failed"):
                self._reconnect_in_background()
            raise SchedulerUnavailableError(
                f"Dask scheduler {self.address!r} unavailable (client {status})", fix=SCHEDULER_FIX
            )
        remote = client.submit(run_timed, call.worker, call.fn, call.args, call.kwargs, pure=False)
        local: concurrent.futures.Future[Any] = concurrent.futures.Future()
        remote.add_done_callback(functools.partial(_settle, local))
        local.add_done_callback(functools.partial(_release, remote))
        return local

    def _reconnect_in_background(self) -> None:
        # The client retries on its own for distributed.comm.timeouts.connect, then gives
        # up for good: past that, a new client is needed once the scheduler is back.
        with self._lock:
            if self._reconnecting or self.closed or not self._address:
                return
            self._reconnecting = True
        threading.Thread(
            target=self._reconnect, name="loopwatch-dask-reconnect", daemon=True
        ).start()

    def _reconnect(self) -> None:
        try:
            old, self._client = self._client, None
            if old is not None:
                with contextlib.suppress(Exception):
                    old.close(timeout=1)
            self._connect()
            emit(
                log,
                logging.INFO,
                "dask_reconnected",
                f"reconnected to the Dask scheduler {self.address}",
                scheduler=self.address,
            )
        except (OSError, TimeoutError) as exc:
            emit(
                log,
                logging.WARNING,
                "dask_reconnect_failed",
                f"could not reconnect to the Dask scheduler {self._address}: {exc!r}",
                scheduler=self._address,
                error=repr(exc),
            )
        finally:
            self._reconnecting = False

    @override
    async def aclose(self, timeout: float) -> None:
        """Close the client, then the embedded cluster, each within ``timeout``."""
        with self._lock:
            self.closed = True
        await asyncio.to_thread(self._close, timeout)

    def _close(self, timeout_s: float) -> None:
        # The client first, so it does not try to reconnect to the cluster going away.
        for part in (self._client, self._cluster):
            if part is None:
                continue
            try:
                part.close(timeout=max(timeout_s, 1.0))
            except Exception as exc:  # a dead scheduler makes close fail: still go on
                emit(
                    log,
                    logging.WARNING,
                    "dask_close_failed",
                    f"closing the Dask {type(part).__name__} failed: {exc!r}",
                    part=type(part).__name__,
                    error=repr(exc),
                )
        self._client = self._cluster = None
