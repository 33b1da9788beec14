"""``usagehub worker``: consume owned partitions of the bus, run the pipeline, commit to PostgreSQL, then ack.

What makes two workers safe on one database (docs/scale-out.md, "Who may race"):
each batch runs in one transaction that (1) inserts events with
``ON CONFLICT DO NOTHING`` on their identity, so a redelivered copy is never new
twice; (2) takes the per-device advisory locks first (the hook added here, so a
meter's very first readings cannot race either), the registers' row locks, then
the per-account advisory locks in sorted order (``storage.sessions``). Partition
ownership only keeps contention low; correctness never depends on it, which is
what makes moving partitions between workers safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from nats.errors import Error as NatsError

from usagehub.adapters.link import Link
from usagehub.bus.consumer import PartitionConsumer, owned_partitions
from usagehub.bus.stream import BusSettings, connect, ensure_stream, servers_of
from usagehub.core.events import UsageEvent
from usagehub.pipeline.pipeline import Pipeline
from usagehub.runtime.assembly import build_pipeline, open_storage, serve_worker_metrics, stopping_on_signals
from usagehub.runtime.config import HubConfig
from usagehub.runtime.profile_files import load_profiles
from usagehub.storage.pool import Connection
from usagehub.storage.sessions import lock_devices

log = logging.getLogger(__name__)


def bus_settings(config: HubConfig, url: str | None = None) -> BusSettings:
    """The bus shape from the hub configuration (``url`` overrides ``config.bus``)."""
    servers = servers_of(url or config.bus or "")
    if not servers:
        raise ValueError("no bus URL")
    return BusSettings(servers=servers, partitions=config.bus_partitions, replicas=config.bus_replicas,
                       ack_wait_s=config.bus_ack_wait_s)


def worker_config(config: HubConfig, workers: int) -> HubConfig:
    """The pipeline settings of one of ``workers`` workers: one commit lane each when there are several.

    A worker's partitions group whole accounts, and its lanes split them by device, so two lanes of one
    worker hold the same accounts and wait for each other's account locks while halving each other's
    batches (more, smaller transactions: more CPU per event). Several workers already overlap one
    worker's Python work with another's round trips to PostgreSQL (bench/scale.py, docs/scale-out.md).
    """
    return config.model_copy(update={"commit_lanes": 1}) if workers > 1 else config


async def lock_devices_first(conn: Connection, events: Sequence[UsageEvent]) -> None:
    """Batch hook (first): take the batch's device locks before any stage reads device state."""
    await lock_devices(conn, {e.device_id for e in events})


async def declare(settings: BusSettings, *, name: str, timeout_s: float = 60.0, link: Link | None = None) -> Any:
    """Connect and make sure the stream exists, waiting while a fresh cluster elects its leaders.

    ``link``: the connection's state for readiness and /metrics (outages logged and counted there).
    """
    where = ", ".join(servers_of_display(settings))

    def on_state(up: bool) -> None:
        if link is None:
            return
        if up:
            link.connected(where)
        elif nc.is_closed:  # closed on purpose (shutdown): not an outage
            link.down()
        else:
            link.lost(ConnectionError(f"disconnected from {where}"))

    nc = await connect(settings, name=name, on_state=on_state if link is not None else None)
    on_state(True)
    js = nc.jetstream(timeout=settings.publish_timeout_s)
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        while True:
            try:
                await ensure_stream(js, settings)
                return nc, js
            except (NatsError, TimeoutError) as err:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                log.info("bus not ready (%r); retrying", err)
                await asyncio.sleep(0.5)
    except BaseException:
        await nc.close()
        raise


def servers_of_display(settings: BusSettings) -> list[str]:
    """The bus servers without their tokens, fit to log."""
    return [s.rsplit("@", 1)[-1] for s in settings.servers]


async def run_worker(config: HubConfig, *, index: int, workers: int, stopping: asyncio.Event | None = None,
                     on_ready: Callable[[Pipeline], Any] | None = None) -> None:
    """Run one worker until ``stopping`` is set (default: SIGTERM/SIGINT): partitions → pipeline → COMMIT → ack."""
    settings = bus_settings(config)
    partitions = owned_partitions(settings.partitions, index, workers)
    serve_worker_metrics(config, index, "worker")
    profiles = load_profiles(config.profiles)
    stopping = stopping_on_signals(stopping)
    async with open_storage(config) as pool:
        config = worker_config(config, workers)
        # Its own ingest_totals row: workers sharing the hub's row queued on its row lock until each commit.
        pipeline, _ = build_pipeline(config, pool, profiles, totals_node=f"worker-{index}")
        pipeline.hooks.insert(0, lock_devices_first)
        nc, js = await declare(settings, name=f"usagehub-worker-{index}")
        # What one worker holds unacked over all its partitions: about two full batches per commit lane,
        # so the lanes commit full batches under load (fewer, larger transactions: less CPU per event) while
        # a message never waits long in the pipeline's queue (a dead worker's share comes back after ack_wait).
        window = max(2, min(2000, 2 * config.commit_lanes * config.batch_max_messages // len(partitions)))
        consumers = [PartitionConsumer(nc, js, settings, p, pipeline, window=window) for p in partitions]
        pipeline_task = asyncio.create_task(pipeline.run(), name="pipeline")
        fetchers = [asyncio.create_task(c.run(), name=f"fetch-{c.partition}") for c in consumers]
        ackers = [asyncio.create_task(c.ack_loop(), name=f"ack-{c.partition}") for c in consumers]
        ackers += [asyncio.create_task(c.keep_alive(), name=f"wpi-{c.partition}") for c in consumers]
        log.info("worker %d/%d ready: partitions %s", index, workers, partitions)
        if on_ready is not None:
            on_ready(pipeline)
        stop_wait = asyncio.create_task(stopping.wait())
        await asyncio.wait([stop_wait, pipeline_task, *fetchers], return_when=asyncio.FIRST_COMPLETED)
        for task in (pipeline_task, *fetchers):
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("%s failed: %r", task.get_name(), task.exception())
        log.info("worker %d stopping: committing and acking what it holds", index)
        stop_wait.cancel()
        await _shutdown(pipeline, pipeline_task, fetchers, ackers, consumers)
        with contextlib.suppress(Exception):
            await nc.flush(timeout=2)
        with contextlib.suppress(TimeoutError):  # the server may be gone too: do not hang on the goodbye
            async with asyncio.timeout(3):
                await nc.close()
        log.info("worker %d stopped: %s", index, pipeline.totals)


async def _shutdown(pipeline: Pipeline, pipeline_task: asyncio.Task[None], fetchers: list[asyncio.Task[None]],
                    ackers: list[asyncio.Task[None]], consumers: list[PartitionConsumer]) -> None:
    """Stop fetching, commit what was fetched, ack it; what is left unacked is redelivered later."""
    for task in fetchers:
        task.cancel()
    await asyncio.gather(*fetchers, return_exceptions=True)
    pipeline_task.cancel()  # the batch being committed is shielded and completes
    await asyncio.gather(pipeline_task, return_exceptions=True)
    await pipeline.drain(timeout_s=30)  # a database that is gone must not keep the worker alive (unacked: redelivered)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            await asyncio.gather(*(c.settled() for c in consumers))
    for task in ackers:
        task.cancel()
    await asyncio.gather(*ackers, return_exceptions=True)
