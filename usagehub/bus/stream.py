"""The ingest stream and its per-partition durable consumers, declared idempotently by every node."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from usagehub.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class BusSettings:
    """The shape of the bus; every ingest node and worker must agree on ``stream``, ``subject`` and ``partitions``."""

    servers: tuple[str, ...]
    stream: str = "USAGEHUB_INGEST"
    subject: str = "usagehub.ingest"        # messages go to "<subject>.<partition>"
    partitions: int = 16
    replicas: int = 1                       # 3 in a cluster: a PubAck then means a quorum stored it
    duplicate_window_s: float = 120.0       # Nats-Msg-Id de-duplication; PostgreSQL identity is the final word
    max_age_s: float = 86_400.0             # kept a day for replay by sequence or time (PostgreSQL keeps the rest)
    ack_wait_s: float = 30.0                # an unacked message is redelivered after this
    max_ack_pending: int = 20_000
    publish_timeout_s: float = 5.0

    def partition_subject(self, partition: int) -> str:
        """The subject of one partition."""
        return f"{self.subject}.{partition}"

    def durable(self, partition: int) -> str:
        """The durable consumer name of one partition (shared by whichever worker owns it)."""
        return f"part-{partition:04d}"


def servers_of(url: str) -> tuple[str, ...]:
    """``nats://a:4222,nats://b:4222`` → each server URL (a bare ``host:port`` gets ``nats://``)."""
    out = []
    for part in url.split(","):
        part = part.strip()
        if part:
            out.append(part if "://" in part else f"nats://{part}")
    return tuple(out)


async def connect(settings: BusSettings, *, name: str, on_state: Callable[[bool], None] | None = None) -> Client:
    """A client that reconnects for ever across the listed servers (a cluster node may die).

    ``on_state(False)`` once when the connection is lost, ``on_state(True)`` once it is back (then it logs
    and counts the outage instead of this module). Closing the client is not a loss: nats-py calls the
    disconnect callback at ``close()`` too, with the client already closed.
    """
    client: list[Client] = []

    async def on_error(err: Exception) -> None:
        log.debug("nats: %r", err)

    async def on_disconnect() -> None:
        if client and client[0].is_closed:
            return
        if on_state is not None:
            on_state(False)
        else:
            log.warning("nats: disconnected; reconnecting")

    async def on_reconnect() -> None:
        if on_state is not None:
            on_state(True)
        else:
            log.info("nats: reconnected")

    client.append(await nats.connect(servers=list(settings.servers), name=name, max_reconnect_attempts=-1,
                                     reconnect_time_wait=0.5, connect_timeout=2, allow_reconnect=True,
                                     error_cb=on_error, disconnected_cb=on_disconnect, reconnected_cb=on_reconnect))
    return client[0]


async def ensure_stream(js: JetStreamContext, settings: BusSettings) -> None:
    """Create the stream, or check the existing one has our subjects (partitions cannot change in place)."""
    # The partition count is part of the contract between ingest nodes and workers: it rides in the
    # description, and a node configured otherwise refuses to start instead of leaving partitions unread.
    description = f"usagehub ingest; partitions={settings.partitions}"
    config = api.StreamConfig(name=settings.stream, subjects=[f"{settings.subject}.*"], description=description,
                              retention=api.RetentionPolicy.LIMITS, storage=api.StorageType.FILE,
                              num_replicas=settings.replicas, duplicate_window=settings.duplicate_window_s,
                              max_age=settings.max_age_s, discard=api.DiscardPolicy.OLD)
    try:
        info = await js.stream_info(settings.stream)
    except NotFoundError:
        try:
            await js.add_stream(config)
            log.info("bus: created stream %s (%d partitions, R=%d)", settings.stream, settings.partitions,
                     settings.replicas)
            return
        except BadRequestError:  # another node created it between our two calls
            info = await js.stream_info(settings.stream)
    if info.config.subjects != config.subjects or info.config.description != description:
        raise ConfigError(f"stream {settings.stream} exists as '{info.config.description}' on {info.config.subjects};"
                          f" this node is configured for '{description}'", field="bus_partitions")


def consumer_config(settings: BusSettings, partition: int) -> api.ConsumerConfig:
    """One durable pull consumer per partition: explicit acks, redelivery after ``ack_wait_s``, never given up."""
    name = settings.durable(partition)
    return api.ConsumerConfig(name=name, durable_name=name, filter_subject=settings.partition_subject(partition),
                              ack_policy=api.AckPolicy.EXPLICIT, deliver_policy=api.DeliverPolicy.ALL,
                              ack_wait=settings.ack_wait_s, max_deliver=-1,
                              max_ack_pending=settings.max_ack_pending, num_replicas=settings.replicas)
