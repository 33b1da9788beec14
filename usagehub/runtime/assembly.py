"""What every process of a hub assembles the same way: the migrated storage and the ingest pipeline with its stages.

``serve`` (runtime.hub), bus workers (runtime.worker), session workers (runtime.session_workers), ``import`` and
the CLI groups import these from here, so none of them imports the hub and the runtime has no import circle.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import AsyncIterator

from prometheus_client import start_http_server
from psycopg_pool import AsyncConnectionPool

from usagehub import metrics
from usagehub.billing.service import BillingService
from usagehub.core.codecs.keyring import KeyRing
from usagehub.core.decode import ProfileSet
from usagehub.core.profiles import Profile
from usagehub.pipeline.alerts import AlertStage
from usagehub.pipeline.pipeline import Pipeline, PipelineSettings
from usagehub.pipeline.sessions import SessionEngine
from usagehub.pipeline.usage import UsageWriter
from usagehub.prepaid.runtime import debit_hook
from usagehub.runtime.config import HubConfig
from usagehub.runtime.preflight import check_database
from usagehub.storage.embedded import embedded_database_url
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import open_pool
from usagehub.storage.registry import KnownDevices
from usagehub.storage.retention import set_event_retention

log = logging.getLogger(__name__)


def stopping_on_signals(stopping: asyncio.Event | None = None) -> asyncio.Event:
    """``stopping``, or an event SIGTERM/SIGINT sets (a child process of the hub: it stops cleanly on either)."""
    if stopping is not None:
        return stopping
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, event.set)
    return event


def serve_worker_metrics(config: HubConfig, index: int, what: str) -> None:
    """With ``worker_metrics_port``: serve this child's /metrics (its counters, latencies, queue) at port + index."""
    if config.worker_metrics_port is None:
        return
    port = config.worker_metrics_port + index
    try:
        start_http_server(port, addr=config.http_host, registry=metrics.REGISTRY)
    except OSError as err:
        raise SystemExit(f"{what} {index}: cannot serve /metrics on {config.http_host}:{port}: {err}") from err
    log.info("%s %d: /metrics on %s:%d", what, index, config.http_host, port)


async def database_url(config: HubConfig) -> str:
    """The configured URL, or the embedded server's (started in a thread: it blocks ~1 s)."""
    if config.database_url:
        return config.database_url
    return await asyncio.to_thread(functools.partial(embedded_database_url, config.data_dir.resolve(),
                                                     timescale=config.timescale))

@contextlib.asynccontextmanager
async def open_storage(config: HubConfig, *, max_size: int = 10) -> AsyncIterator[AsyncConnectionPool]:
    """A migrated pool on the configured (or embedded) database."""
    if config.database_url:  # a wrong URL fails in seconds with its cause, not after 15 s of retries
        await check_database(config.database_url)
    pool = await open_pool(await database_url(config), max_size=max_size)
    try:
        await migrate(pool)
        await set_event_retention(pool, config.event_retention_days)
        yield pool
    finally:
        await pool.close()

def build_pipeline(config: HubConfig, pool: AsyncConnectionPool, profiles: list[Profile],
                   keyring: KeyRing | None = None, *, totals_node: str = "hub") -> tuple[Pipeline, BillingService]:
    """The ingest pipeline with its batch hooks (usage, sessions, billing) and the billing service over them.

    ``billing.engine`` also re-allocates usage when a binding changes (``registry_for``). ``totals_node``: the
    ``ingest_totals`` row its batches add to (one per process, so processes never wait for each other's row).
    """
    profile_set = ProfileSet(profiles, keyring)
    pipeline = Pipeline(pool, profile_set, KnownDevices(pool),
                        PipelineSettings(batch_max_messages=config.batch_max_messages,
                                         batch_max_wait_ms=config.batch_max_wait_ms,
                                         commit_lanes=config.commit_lanes, totals_node=totals_node))
    usage = UsageWriter(profile_set)
    pipeline.hooks.append(usage.apply)
    # Sessions and billing records follow the entries the UsageWriter wrote, in the same transaction.
    engine = SessionEngine(profile_set, entries=lambda: usage.last_entries)
    pipeline.hooks.append(engine.apply)
    # Prepaid accounts are debited for the usage points the engine stored, in the same transaction.
    pipeline.hooks.append(debit_hook(pool, engine))
    # Last contact per device and tamper/fault alerts, in the same transaction.
    pipeline.hooks.append(AlertStage(profile_set).apply)
    return pipeline, BillingService(pool, engine)

