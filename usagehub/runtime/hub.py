"""The hub: storage, pipeline, adapters and the web API wired together, with clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import uvicorn
from psycopg_pool import AsyncConnectionPool

from usagehub import adapters
from usagehub.adapters.base import Adapter, AdapterSettings, Sink
from usagehub.adapters.link import Link, keep_serving
from usagehub.billing.service import BillingService
from usagehub.core.events import RawMessage
from usagehub.core.profiles import Profile
from usagehub.graphql.context import Services
from usagehub.graphql.cost import Limits
from usagehub.pipeline.pipeline import Pipeline
from usagehub.pipeline.rebind import rebind, sweep_expired
from usagehub.pipeline.rebuild import rebuild_unmarked
from usagehub.prepaid.runtime import PrepaidRuntime
from usagehub.runtime.assembly import build_pipeline, open_storage
from usagehub.runtime.broker import EmbeddedBroker
from usagehub.runtime.config import HubConfig
from usagehub.runtime.device_keys import open_keyring, refresh_keyring
from usagehub.runtime.operations import wire_operations
from usagehub.runtime.preflight import check_ports, listen_socket
from usagehub.runtime.profile_files import load_profiles
from usagehub.runtime.readiness import Readiness
from usagehub.storage.keys import ApiKeys
from usagehub.storage.queries import Reads
from usagehub.storage.registry import DeviceDirectorySql, Registry
from usagehub.storage.retention_pack import pack_daily
from usagehub.web.app import create_app

if TYPE_CHECKING:
    from usagehub.runtime.ingest_processes import ProcessSink

log = logging.getLogger(__name__)
# Adapters that only bind a port: a failure at start names the port; one that dies later is rebound.
BIND_ONLY = frozenset({"coap", "http", "binary", "snmp"})
# At stop, what was received is committed; a database that does not answer within this long ends the wait
# (nothing uncommitted was acknowledged: senders and brokers deliver it again).
STOP_DRAIN_S = 30.0


@dataclass
class Hub:
    """A running hub; ``stop()`` asks it to shut down cleanly."""

    config: HubConfig
    pool: AsyncConnectionPool
    pipeline: Pipeline
    keys: ApiKeys
    registry: Registry
    billing: BillingService
    adapters: dict[str, Adapter] = field(default_factory=dict)
    sink: Sink | None = None  # where adapters submit: the bus publisher with --bus/--workers, else the pipeline
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    http_port: int = 0
    background: list[asyncio.Task[None]] = field(default_factory=list)
    prepaid: PrepaidRuntime | None = None
    broker: EmbeddedBroker | None = None  # the embedded broker, when no mqtt_url is set
    links: dict[str, Link] = field(default_factory=dict)  # connections beside the adapters (the bus), in /readyz
    ingest: ProcessSink | None = None  # with --ingest-processes: where the MQTT adapter offers its messages

    def stop(self) -> None:
        """Begin a clean shutdown."""
        self.stopping.set()

    async def replay(self, ids: list[int]) -> list[tuple[int, str, str | None]]:
        """Resubmit quarantined messages and mark each with what became of it."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT quarantine_id, received_at, transport, topic, source, payload, meta FROM quarantine "
                "WHERE quarantine_id = ANY(%s) AND replayed_at IS NULL ORDER BY quarantine_id", (ids,))
            rows = await cur.fetchall()
        results: list[tuple[int, str, str | None]] = []
        for qid, received_at, transport, topic, source, payload, meta in rows:
            message = RawMessage(transport=str(transport), topic=str(topic), source=str(source),
                                 payload=bytes(payload), received_at=received_at,
                                 meta={str(k): str(v) for k, v in (meta or {}).items()})
            receipt = await (await self.pipeline.submit(message))
            if receipt.quarantine_id != qid:  # refused again for the same reason: the entry stays open
                async with self.pool.connection() as conn:
                    await conn.execute("UPDATE quarantine SET replayed_at = now(), replay_outcome = %s "
                                       "WHERE quarantine_id = %s", (receipt.outcome.value, qid))
            results.append((int(qid), receipt.outcome.value, receipt.reason))
        return results


def registry_for(pool: AsyncConnectionPool, billing: BillingService) -> Registry:
    """A registry whose binding changes re-allocate the device's earlier usage in the same transaction."""
    engine = billing.engine

    async def on_bind(conn: Any, device_id: str, at: datetime) -> None:
        await rebind(engine, conn, device_id, at)

    return Registry(pool, on_bind=on_bind)


async def sweep_sessions(hub: Hub, *, every_s: float = 60.0) -> None:
    """Close sessions whose idle deadline passed with no new data (billed quantities do not change)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            async with hub.pool.connection() as conn, conn.transaction():
                await sweep_expired(hub.billing.engine, conn, datetime.now(UTC))
        except Exception:  # a failed sweep retries next round; ingest is unaffected
            log.exception("session sweep failed")


async def prune_quarantine_hourly(hub: Hub) -> None:
    """Apply the quarantine retention (age and row cap) at start and every hour."""
    from usagehub.storage.quarantine import prune_quarantine

    while True:
        try:
            deleted = await prune_quarantine(hub.pool, now=datetime.now(UTC),
                                             retention=timedelta(days=hub.config.quarantine_retention_days),
                                             max_rows=hub.config.quarantine_max_rows)
            if deleted:
                log.info("quarantine retention removed %d entries", deleted)
        except Exception:  # retried next hour; ingest is unaffected
            log.exception("quarantine retention failed")
        await asyncio.sleep(3600)


async def daily_analytics(hub: Hub, service: Any) -> None:
    """Refresh behaviour features and segments once at start, then shortly after each UTC midnight."""
    while True:
        now = datetime.now(UTC)
        try:
            result, evaluated = await service.daily(now.date() - timedelta(days=1), now)
            log.info("analytics refreshed: %d accounts, %d segments", result.accounts, len(evaluated))
        except Exception:  # a failed refresh retries tomorrow; the previous features stay
            log.exception("daily analytics refresh failed")
        tomorrow = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
        await asyncio.sleep((tomorrow - now).total_seconds() + 300)


@contextlib.asynccontextmanager
async def running_pipeline(config: HubConfig) -> AsyncIterator[tuple[Pipeline, list[Profile]]]:
    """A pipeline committing in the background (for ``usagehub import``); drained on exit."""
    profiles = load_profiles(config.profiles)
    async with open_storage(config) as pool:
        pipeline, _ = build_pipeline(config, pool, profiles, await open_keyring(config, pool))
        task = asyncio.create_task(pipeline.run(), name="pipeline")
        try:
            yield pipeline, profiles
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await pipeline.drain()


def _adapter_configs(config: HubConfig, broker_url: str) -> dict[str, dict[str, Any]]:
    configs = {name: dict(value) for name, value in config.adapters.items()}
    mqtt = configs.setdefault("mqtt", {})
    mqtt.setdefault("url", broker_url)
    mqtt.setdefault("client_id", config.mqtt_client_id)
    if not config.mqtt_url:
        mqtt.setdefault("protocol", "3.1.1")  # amqtt speaks MQTT 3.1.1 only
    if "sparkplug" in configs:  # the Sparkplug B host shares the hub's broker unless told otherwise
        configs["sparkplug"].setdefault("url", broker_url)
        if not config.mqtt_url:
            configs["sparkplug"].setdefault("protocol", "3.1.1")
    return configs


async def run_hub(config: HubConfig, *, on_ready: Callable[[Hub], Any] | None = None,
                  install_signals: bool = True) -> None:
    """Run a hub until SIGINT/SIGTERM or ``Hub.stop()``; commits and acknowledges the batch in flight."""
    profiles = load_profiles(config.profiles)
    check_ports([(config.http_host, config.http_port, "--http-port", "GraphQL/HTTP"),
                 *([] if config.mqtt_url else [("127.0.0.1", config.embedded_broker_port, "--embedded-broker-port",
                                                "embedded MQTT broker")])])
    async with contextlib.AsyncExitStack() as stack:
        broker_url, broker = config.mqtt_url, None
        if not broker_url:  # clients of the embedded broker log in too (runtime/broker.py)
            broker = await stack.enter_async_context(EmbeddedBroker(config.embedded_broker_port))
            broker_url = broker.url()
        pool = await stack.enter_async_context(open_storage(config))
        if broker is not None:
            broker.guard.directory = DeviceDirectorySql(pool)
        keyring = await open_keyring(config, pool)
        pipeline, billing = build_pipeline(config, pool, profiles, keyring)
        await rebuild_unmarked(billing.engine, pool)  # sessions stored before walk marks (once; before ingest)
        from usagehub.runtime import scaleout
        from usagehub.runtime.session_workers import session_workers

        ingest = None
        if not scaleout.uses_bus(config):
            children = await stack.enter_async_context(session_workers(config, pool))
            billing.engine.defer = children is not None  # batches queue their sessions; the children replay them
            from usagehub.runtime.ingest_processes import ingest_processes, process_count

            if process_count(config):  # children decode and commit MQTT (the mqtt adapter always runs)
                from usagehub.runtime.worker import lock_devices_first

                pipeline.hooks.insert(0, lock_devices_first)  # its own pipeline (HTTP, CoAP...) writes beside them
                ingest = await stack.enter_async_context(ingest_processes(config, pipeline, pool))
        hub = Hub(config=config, pool=pool, pipeline=pipeline, keys=ApiKeys(pool),
                  registry=registry_for(pool, billing), billing=billing, broker=broker, ingest=ingest)
        hub.prepaid = PrepaidRuntime.create(pool, profiles, mqtt_url=broker_url, client_id=config.mqtt_client_id,
                                            shared=bool(config.mqtt_url))  # amqtt (embedded) has no $share
        settings = AdapterSettings(profiles=profiles, devices=DeviceDirectorySql(pool), data_dir=config.data_dir,
                                   prepaid=hub.prepaid.service)
        if scaleout.uses_bus(config):  # entered before the adapters, so it outlives them at shutdown
            hub.links["bus"] = Link("bus")
            hub.sink = await stack.enter_async_context(scaleout.ingest_bus(config, profiles, pool,
                                                                           link=hub.links["bus"]))
        for name, raw in _adapter_configs(config, broker_url).items():
            factory = adapters.load(name)
            hub.adapters[name] = await stack.enter_async_context(
                factory.create(factory.config_model.model_validate(raw), replace(settings, keyring=keyring)))
        if "dlms" in hub.adapters and hub.prepaid is not None:  # prepaid blocks reach DLMS meters (class 70)
            hub.prepaid.dispatcher.dlms = hub.adapters["dlms"].command  # type: ignore[attr-defined]
        # Bound here, not by uvicorn (which logs a bind error and calls sys.exit): a port taken since the
        # check ends the start with the check's message naming the port.
        http = stack.enter_context(contextlib.closing(
            listen_socket(config.http_host, config.http_port, "--http-port", "GraphQL/HTTP")))
        hub.background.append(asyncio.create_task(refresh_keyring(config, pool, keyring), name="device-keys"))
        await _serve(hub, install_signals, on_ready, profiles, http)


async def _serve(hub: Hub, install_signals: bool, on_ready: Callable[[Hub], Any] | None,
                 profiles: list[Profile], http: socket.socket) -> None:
    from usagehub.adapters.http import HttpConfig, ingest_routes
    from usagehub.adapters.http.slow import deadline_protocol
    from usagehub.rating.service import RatingService
    from usagehub.web.exports import export_routes

    rating = RatingService(hub.pool)
    await rating.start()  # loads the shipped VAT rates into an empty table
    services = Services(registry=hub.registry, reads=Reads(hub.pool), ingest_totals=hub.pipeline.totals,
                        replay=hub.replay, extra={}, billing=hub.billing, rating=rating)
    if hub.prepaid is not None:
        services.prepaid = hub.prepaid.service
        services.extra["prepaid_events"] = hub.prepaid.events
    from usagehub.analytics.service import AnalyticsService
    from usagehub.web.analytics import analytics_routes

    services.analytics = AnalyticsService(hub.pool)
    # HTTP ingest shares the API port; devices authenticate with their own tokens.
    sink = hub.sink or hub.pipeline
    routes = [*ingest_routes(sink, DeviceDirectorySql(hub.pool), HttpConfig(), profiles),
              *export_routes(rating, hub.keys), *analytics_routes(services.analytics, hub.keys)]
    console, operation_tasks = await wire_operations(hub.pool, hub.pipeline.profiles, services, hub.keys,
                                                     hub.config.profiles, profiles)
    routes += console
    hub.background += operation_tasks
    c = hub.config
    limits = Limits(max_body_bytes=c.graphql_max_body_bytes, max_tokens=c.graphql_max_tokens,
                    max_depth=c.graphql_max_depth, max_aliases=c.graphql_max_aliases,
                    max_fields=c.graphql_max_fields, max_cost=c.graphql_max_cost)
    side_links = {"mqtt-prepaid": hub.prepaid.mqtt.link} if hub.prepaid and hub.prepaid.mqtt else {}
    if hub.ingest is not None:
        side_links["ingest-processes"] = hub.ingest.link
    rebound = {n: Link(n) for n in hub.adapters if n in BIND_ONLY}  # rebound with backoff if they die
    readiness = Readiness(hub.adapters, hub.ingest or hub.pipeline, {**hub.links, **side_links, **rebound})
    app = create_app(services, hub.keys, ready=readiness.ready, live=readiness.live, limits=limits,
                     extra_routes=list(routes))
    ingest = HttpConfig()  # slow clients: header and body deadlines on the API port too
    server = uvicorn.Server(uvicorn.Config(app, host=hub.config.http_host, port=hub.config.http_port,
                                           log_level="warning", lifespan="off",
                                           http=deadline_protocol(header_timeout_s=ingest.header_timeout_s,
                                                                  body_timeout_s=ingest.body_timeout_s,
                                                                  max_connections=ingest.max_connections),
                                           ws_max_size=limits.max_body_bytes))  # subscription messages too
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]  # hub owns signals
    if install_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, hub.stop)
    pipeline_task = asyncio.create_task(hub.pipeline.run(), name="pipeline")
    hub.background.append(asyncio.create_task(sweep_sessions(hub), name="session-sweep"))
    hub.background.append(asyncio.create_task(prune_quarantine_hourly(hub), name="quarantine-retention"))
    hub.background.append(asyncio.create_task(hub.keys.listen(), name="api-key-revocations"))
    hub.background.append(asyncio.create_task(hub.pipeline.partitions.run(), name="partitions-ahead"))
    hub.background.append(asyncio.create_task(pack_daily(hub.pool), name="events-pack"))
    hub.background.append(asyncio.create_task(daily_analytics(hub, services.analytics), name="analytics-daily"))
    hub.background += hub.prepaid.start() if hub.prepaid is not None else []
    # An OfferSink (the MQTT adapter offers, and takes no receipt); the other adapters use the hub's pipeline.
    sinks = {"mqtt": cast(Sink, hub.ingest)} if hub.ingest is not None else {}
    adapter_tasks = [asyncio.create_task(keep_serving(a, sink, rebound[n], detail=n) if n in rebound
                                         else a.run(sinks.get(n, sink)), name=f"adapter:{n}")
                     for n, a in hub.adapters.items()]
    web_task = asyncio.create_task(server.serve(sockets=[http]), name="web")
    while not server.started and not web_task.done():  # noqa: ASYNC110 — uvicorn offers only a flag
        await asyncio.sleep(0.02)
    if web_task.done():
        web_task.result()  # raises the bind error
    hub.http_port = server.servers[0].sockets[0].getsockname()[1]
    stop_wait = asyncio.create_task(hub.stopping.wait())
    vital = [stop_wait, pipeline_task, web_task, *adapter_tasks]
    starting = asyncio.create_task(readiness.wait_started(), name="wait-adapters")
    await asyncio.wait([starting, *vital], return_when=asyncio.FIRST_COMPLETED)  # ready once every adapter is up
    if starting.done():
        hub.ready.set()
        log.info("usagehub ready: GraphQL on http://%s:%d/graphql at %s", hub.config.http_host, hub.http_port,
                 datetime.now(UTC).isoformat(timespec="seconds"))
        if on_ready is not None:
            result = on_ready(hub)
            if asyncio.iscoroutine(result):
                await result
        await asyncio.wait(vital, return_when=asyncio.FIRST_COMPLETED)
    starting.cancel()
    for task in (pipeline_task, web_task, *adapter_tasks):
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("%s failed: %r", task.get_name(), task.exception())
    await _shutdown(hub, server, pipeline_task, adapter_tasks, web_task)
    stop_wait.cancel()


async def _shutdown(hub: Hub, server: uvicorn.Server, pipeline_task: asyncio.Task[None],
                    adapter_tasks: list[asyncio.Task[None]], web_task: asyncio.Task[None]) -> None:
    """Stop receiving, commit and acknowledge what was received, then close the doors."""
    log.info("usagehub stopping: finishing the batch in flight")
    hub.ready.clear()
    for task in (*hub.background, *adapter_tasks):
        task.cancel()
    await asyncio.gather(*hub.background, *adapter_tasks, return_exceptions=True)
    if hub.ingest is not None:  # what the children hold is committed (and reported) before they stop
        await hub.ingest.drain(timeout_s=STOP_DRAIN_S)
    pipeline_task.cancel()  # the batch being committed is shielded and completes
    await asyncio.gather(pipeline_task, return_exceptions=True)
    await hub.pipeline.drain(timeout_s=STOP_DRAIN_S)  # a database that is gone must not keep the hub alive
    await asyncio.sleep(0.05)  # let the last PUBACKs leave before the connection closes
    server.should_exit = True
    await asyncio.gather(web_task, return_exceptions=True)
    log.info("usagehub stopped: %s", hub.pipeline.totals)
