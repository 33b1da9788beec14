"""``serve --bus`` / ``serve --workers N``: the hub as an ingest node, with workers as child processes.

With ``--bus URL`` the adapters publish to that JetStream and workers run
elsewhere (``usagehub worker``). With ``--workers N`` and no URL, an embedded
nats-server child process holds the stream under the data folder and N worker
processes are started and restarted here: both cores of a small box are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

from psycopg_pool import AsyncConnectionPool

from usagehub.adapters.link import Link
from usagehub.bus.publisher import BusPublisher
from usagehub.core.binding import BindingIndex
from usagehub.core.decode import ProfileSet
from usagehub.core.events import UsageEvent
from usagehub.core.profiles import Profile
from usagehub.runtime.config import HubConfig
from usagehub.runtime.natsd import NatsServer, killed_with_parent
from usagehub.runtime.worker import bus_settings, declare
from usagehub.storage.routing import binding_index

log = logging.getLogger(__name__)

# The settings a worker child needs, passed as USAGEHUB_* environment (flags are the parent's own).
_FOR_WORKERS = ("data_dir", "database_url", "profiles", "log_level", "batch_max_messages", "batch_max_wait_ms",
                "commit_lanes", "bus_partitions", "bus_replicas", "bus_ack_wait_s", "worker_metrics_port", "http_host")


def uses_bus(config: HubConfig) -> bool:
    """Whether ``serve`` runs as an ingest node over a bus."""
    return bool(config.bus) or config.workers > 0


def worker_environment(config: HubConfig, bus_url: str) -> dict[str, str]:
    """The environment of a worker child: the parent's settings and the bus URL."""
    env = dict(os.environ)
    for name in _FOR_WORKERS:
        value = getattr(config, name)
        if value is not None:
            env[f"USAGEHUB_{name.upper()}"] = str(value.resolve() if isinstance(value, Path) else value)
    env["USAGEHUB_BUS"] = bus_url
    return env


class AccountRouter:
    """Partition key of a message: the account of its device, else the device (``bus.codec.Router``).

    All devices of one account then land in one partition, so one worker holds an
    account's session state and workers never queue on each other's account locks.
    A device bound to one account only (the usual case) is keyed by it whatever the
    event's time, so the ingest node routes its messages without decoding them (a cache
    of device -> key); only a device that moved between accounts needs the event's time
    (``key_of`` a decoded event). The bindings are re-read every ``refresh_s``: during a
    stale moment a message may go to the device's or the old account's partition, which
    costs contention, not correctness (see runtime/worker.py for what makes concurrent
    writers safe).
    """

    def __init__(self, pool: AsyncConnectionPool, refresh_s: float = 10.0, max_cached: int = 500_000) -> None:
        self.pool, self.refresh_s, self.max_cached = pool, refresh_s, max_cached
        self.index = BindingIndex()
        self._keys: dict[str, str | None] = {}

    def device_key(self, device_id: str) -> str | None:
        """``account:<id>`` if the device was only ever bound to that account, ``device:<id>`` if never bound,
        None if it moved (the key then depends on the event's time)."""
        try:
            return self._keys[device_id]
        except KeyError:
            pass
        accounts = {b.account_id for b in self.index.bindings_of(device_id)}
        key = (f"account:{accounts.pop()}" if len(accounts) == 1 else None) if accounts else f"device:{device_id}"
        if len(self._keys) >= self.max_cached:  # a flood of invented device ids must not grow memory
            self._keys.clear()
        self._keys[device_id] = key
        return key

    def key_of(self, event: UsageEvent) -> str:
        """The key of a decoded ``event``: its device's only account, else the account holding it at event time."""
        key = self.device_key(event.device_id)
        if key is not None:
            return key
        account = self.index.account_at(event.device_id, event.ts)
        return f"account:{account}" if account is not None else f"device:{event.device_id}"

    async def refresh(self) -> None:
        """Re-read every binding."""
        index = await binding_index(self.pool)
        self.index, self._keys = index, {}

    async def run(self) -> None:
        """Refresh until cancelled; a failed refresh keeps the previous index."""
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("binding refresh for bus routing failed; keeping the previous bindings")


class WorkerPool:
    """N ``usagehub worker`` child processes, restarted when one dies, stopped with SIGTERM (they drain)."""

    def __init__(self, config: HubConfig, bus_url: str, count: int, log_dir: Path, *,
                 env: dict[str, str] | None = None, command: str = "worker") -> None:
        """``command``: the usagehub command each child runs (``worker``, or ``session-worker`` with ``env``)."""
        self.env = env if env is not None else worker_environment(config, bus_url)
        self.count, self.log_dir, self.command = count, log_dir, command
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self.restarts = 0

    def start(self, index: int) -> None:
        """Start child ``index`` (its log: ``<data>/workers/<command>-<index>.log``)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "usagehub", self.command]
        if self.command == "worker":
            argv += ["--index", str(index), "--workers", str(self.count)]
        elif self.command == "ingest-worker":
            argv += ["--index", str(index)]
        with (self.log_dir / f"{self.command}-{index}.log").open("ab") as out:
            self.procs[index] = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                                 preexec_fn=killed_with_parent)

    async def supervise(self, every_s: float = 1.0) -> None:
        """Start every worker and restart any that exits, until cancelled."""
        for i in range(self.count):
            self.start(i)
        while True:
            await asyncio.sleep(every_s)
            for i, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is not None:
                    log.warning("%s %d exited with %s; restarting", self.command, i, proc.returncode)
                    self.restarts += 1
                    self.start(i)

    @contextlib.asynccontextmanager
    async def running(self, name: str, side: dict[str, Coroutine[Any, Any, None]] | None = None
                      ) -> AsyncIterator[WorkerPool]:
        """Supervise the workers (task ``name``) and run the ``side`` tasks (by name) while in the block; on exit
        cancel them all and stop the workers."""
        tasks = [asyncio.create_task(self.supervise(), name=name),
                 *(asyncio.create_task(work, name=task) for task, work in (side or {}).items())]
        try:
            yield self
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.stop()

    async def stop(self, timeout_s: float = 12.0) -> None:
        """SIGTERM every worker and wait: each commits and acks what it holds.

        A worker still running after ``timeout_s`` (its own shutdown is bounded at about 15 s by its
        timeouts, a quiet one takes well under a second) is killed: what it held unacknowledged is
        delivered again by the stream, so a hub's clean stop stays bounded and loses nothing.
        """
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for proc in live:
            proc.terminate()
        for i, proc in enumerate(live):
            try:
                await asyncio.to_thread(proc.wait, timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s %d still running %.0f s after SIGTERM: killed (the stream redelivers what it "
                            "held)", self.command, i, timeout_s)
                proc.kill()


@contextlib.asynccontextmanager
async def ingest_bus(config: HubConfig, profiles: list[Profile], pool: AsyncConnectionPool, *,
                     link: Link | None = None) -> AsyncIterator[BusPublisher]:
    """The publisher adapters submit to; with ``workers`` and no URL, the embedded nats-server and workers too."""
    async with contextlib.AsyncExitStack() as stack:
        router = AccountRouter(pool)
        await router.refresh()
        refresher = asyncio.create_task(router.run(), name="bus-routing")
        stack.callback(refresher.cancel)
        url = config.bus
        if not url:
            # Loopback only, and a fresh token per start: only this hub and its workers get in.
            server = NatsServer(store_dir=(config.data_dir / "nats" / "jetstream").resolve(), name="usagehub",
                                token=secrets.token_urlsafe(24))
            # Started from the loop's thread (a short blocking wait) so it dies with this process, even on SIGKILL.
            server.start(log_file=config.data_dir / "nats" / "nats-server.log", tied=True)
            stack.callback(server.stop)
            url = server.url
        settings = bus_settings(config, url)
        nc, _ = await declare(settings, name="usagehub-ingest", link=link)
        stack.push_async_callback(nc.close)
        if config.workers:
            workers = WorkerPool(config, url, config.workers, config.data_dir / "workers")
            await stack.enter_async_context(workers.running("worker-pool"))
        publisher = BusPublisher(nc, ProfileSet(profiles), settings, router=router)
        log.info("ingest over the bus (%d servers): %d partitions, %d local workers", len(settings.servers),
                 settings.partitions, config.workers)
        try:
            yield publisher
        finally:
            await publisher.flush()
