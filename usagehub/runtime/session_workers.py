"""Session workers as child processes of ``serve`` (``--session-workers N``; default 2 on 2 cores or more).

The hub's pipeline then queues the session segments each batch touched instead
of replaying them (``SessionEngine.defer``), and N ``usagehub session-worker``
children replay the queue (``pipeline.session_worker``): receiving, decoding and
storing on one core, sessions and billing records on the other. Children are
restarted when they die and end with the hub. A child reads the meter types in
force (files and stored versions, kept current) for idle timeouts and units.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from psycopg_pool import AsyncConnectionPool

from usagehub import metrics
from usagehub.core.decode import ProfileSet
from usagehub.operations.profiles import ProfileCatalog
from usagehub.pipeline.session_worker import SessionWorker
from usagehub.pipeline.sessions import SessionEngine
from usagehub.runtime.assembly import open_storage, stopping_on_signals
from usagehub.runtime.config import HubConfig
from usagehub.runtime.profile_files import load_profiles
from usagehub.runtime.scaleout import WorkerPool
from usagehub.storage.session_queue import backlog

log = logging.getLogger(__name__)

# What a child needs of the parent's settings; the database is the parent's resolved URL.
_FOR_CHILDREN = ("data_dir", "profiles", "log_level")


def child_environment(config: HubConfig, database_url: str) -> dict[str, str]:
    """The environment of a session worker: the parent's settings, its database, no bus."""
    env = {k: v for k, v in os.environ.items() if k not in ("USAGEHUB_BUS", "USAGEHUB_WORKERS")}
    for name in _FOR_CHILDREN:
        value = getattr(config, name)
        env[f"USAGEHUB_{name.upper()}"] = str(value.resolve() if isinstance(value, Path) else value)
    env["USAGEHUB_DATABASE_URL"] = database_url
    return env


async def run_session_worker(config: HubConfig, *, stopping: asyncio.Event | None = None) -> None:
    """Replay the session queue until SIGTERM/SIGINT (or ``stopping``); a round in progress rolls back."""
    stopping = stopping_on_signals(stopping)
    files = load_profiles(config.profiles)
    async with open_storage(config, max_size=2) as pool:
        profiles = ProfileSet(files)
        catalog = ProfileCatalog(pool, profiles, config.profiles, files)
        await catalog.load()
        worker = SessionWorker(pool, SessionEngine(profiles))
        tasks = [asyncio.create_task(worker.run(), name="session-worker"),
                 asyncio.create_task(catalog.listen(), name="meter-types")]
        log.info("session worker ready (pid %d)", os.getpid())
        stop_wait = asyncio.create_task(stopping.wait())
        await asyncio.wait([stop_wait, tasks[0]], return_when=asyncio.FIRST_COMPLETED)
        for task in (*tasks, stop_wait):
            task.cancel()
        await asyncio.gather(*tasks, stop_wait, return_exceptions=True)
        log.info("session worker stopped: %d segments replayed", worker.replayed)


async def watch_backlog(pool: AsyncConnectionPool, every_s: float = 5.0) -> None:
    """Keep the queue's size and oldest age in /metrics."""
    while True:
        try:
            async with pool.connection() as conn:
                size, age = await backlog(conn)
            metrics.SESSION_BACKLOG.set(size)
            metrics.SESSION_BACKLOG_AGE.set(age)
        except Exception:  # a metric; the next round tries again
            log.debug("session queue backlog not read", exc_info=True)
        await asyncio.sleep(every_s)


@contextlib.asynccontextmanager
async def session_workers(config: HubConfig, pool: AsyncConnectionPool) -> AsyncIterator[WorkerPool | None]:
    """Start ``config.session_workers`` children (none: None), supervise them, stop them on exit."""
    if config.session_workers <= 0:
        yield None
        return
    children = WorkerPool(config, "", config.session_workers, config.data_dir / "session-workers",
                          env=child_environment(config, str(pool.conninfo)), command="session-worker")
    async with children.running("session-workers", {"session-backlog": watch_backlog(pool)}):
        yield children
