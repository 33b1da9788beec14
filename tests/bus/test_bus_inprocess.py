"""Publisher → JetStream → two workers → PostgreSQL, in one process: exact totals, receipts, foreign bytes, auth."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from tests.bus.conftest import billed, scalar
from tests.bus.fleet import build
from usagehub.adapters.base import Outcome
from usagehub.bus.publisher import BusPublisher
from usagehub.bus.stream import BusSettings
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage
from usagehub.errors import ConfigError
from usagehub.runtime.config import HubConfig
from usagehub.runtime.natsd import NatsServer
from usagehub.runtime.profile_files import load_profiles
from usagehub.runtime.seed import apply_seed, parse_seed
from usagehub.runtime.worker import bus_settings, declare, run_worker
from usagehub.storage.pool import open_pool
from usagehub.storage.registry import Registry

pytestmark = [pytest.mark.integration]


async def _wait(url: str, sql: str, n: int, within_s: float = 30) -> int:
    deadline = time.monotonic() + within_s
    seen = 0
    while time.monotonic() < deadline:
        seen = await asyncio.to_thread(scalar, url, sql)
        if seen >= n:
            return seen
        await asyncio.sleep(0.1)
    return seen


async def test_fleet_through_two_workers_bills_exactly(database_url: str, nats_server: NatsServer,
                                                       tmp_path: Path) -> None:
    fleet = build(devices=12, readings=30)
    pool = await open_pool(database_url, min_size=1, max_size=2)
    try:
        await apply_seed(Registry(pool), parse_seed(fleet.seed_yaml(tmp_path / "seed.yaml")))
    finally:
        await pool.close()
    config = HubConfig(database_url=database_url, data_dir=tmp_path, bus=nats_server.url, bus_partitions=4,
                       bus_ack_wait_s=2)
    stop = asyncio.Event()
    workers = [asyncio.create_task(run_worker(config, index=i, workers=2, stopping=stop)) for i in range(2)]
    settings = bus_settings(config)
    nc, js = await declare(settings, name="test-ingest")
    try:
        publisher = BusPublisher(nc, ProfileSet(load_profiles(config.profiles)), settings)
        futures = [await publisher.submit(m) for m in fleet.messages]
        # Bad bytes on a door whose answer carries the verdict (HTTP): decoded at the ingest node.
        http_bad = RawMessage(transport="http", topic="ingest/m001", payload=b"\xff{not json",
                              received_at=fleet.messages[0].received_at,
                              meta={"device_id": "m001", "profile": "acme-http-meter", "line": "1"})
        futures.append(await publisher.submit(http_bad))
        receipts = await asyncio.gather(*futures)
        await publisher.flush()  # every PubAck in; its reply subscription and sweeper stop
        outcomes = [r.outcome for r in receipts]
        # MQTT garbage is routed by its topic's device without decoding: in the stream, so "accepted" here;
        # the worker decodes it and quarantines it with its bytes (counted below).
        assert outcomes.count(Outcome.QUARANTINED) == 1 and receipts[-1].reason == "not JSON"
        # Every resend inside the duplicate window is dropped by the stream itself.
        assert outcomes.count(Outcome.DUPLICATE) == len(fleet.messages) - fleet.distinct_events - fleet.garbage
        # A hostile publisher with the token but not our format: quarantined with its bytes, not lost, no crash.
        await js.publish(settings.partition_subject(1), b"\x00rogue bytes", headers={"Nats-Msg-Id": "rogue-1"})
        assert await _wait(database_url, "SELECT count(*) FROM events", fleet.distinct_events) \
            == fleet.distinct_events
        assert await _wait(database_url, "SELECT count(*) FROM quarantine", fleet.garbage + 2) == fleet.garbage + 2
        assert scalar(database_url, "SELECT count(*) FROM quarantine WHERE transport = 'bus'") == 1
        assert scalar(database_url, "SELECT count(*) FROM quarantine WHERE transport = 'mqtt' "
                                    "AND reason = 'not JSON' AND length(payload) = 11") == fleet.garbage
        assert scalar(database_url, "SELECT count(*) FROM quarantine WHERE transport = 'http'") == 1
        deadline = time.monotonic() + 20
        while billed(database_url) != fleet.billed and time.monotonic() < deadline:  # noqa: ASYNC110 — polls PG
            await asyncio.sleep(0.2)
        assert billed(database_url) == fleet.billed
        # Nothing left unacked once the workers are idle.
        for p in range(4):
            info = await js.consumer_info(settings.stream, settings.durable(p))
            assert info.num_ack_pending == 0 and info.num_pending == 0
    finally:
        stop.set()
        await asyncio.gather(*workers)
        await nc.close()


@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_bus_refuses_a_client_without_the_token(nats_server: NatsServer, token: str | None) -> None:
    # Spoken by hand (nats-py leaks its socket on a refused connect): INFO, CONNECT, PING -> -ERR.
    reader, writer = await asyncio.open_connection("127.0.0.1", nats_server.port)
    try:
        info = await reader.readline()
        assert b'"auth_required":true' in info
        connect = {"verbose": False, "pedantic": False, "protocol": 1, **({"auth_token": token} if token else {})}
        writer.write(b"CONNECT " + orjson.dumps(connect) + b"\r\nPING\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.readline(), 5)
        assert answer.startswith(b"-ERR") and b"Authorization Violation" in answer
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_node_with_another_partition_count_refuses_to_start(nats_server: NatsServer) -> None:
    nc, _ = await declare(BusSettings(servers=(nats_server.url,), partitions=4), name="first")
    await nc.close()
    with pytest.raises(ConfigError, match="partitions=4"):
        await declare(BusSettings(servers=(nats_server.url,), partitions=8), name="second")
    nc, _ = await declare(BusSettings(servers=(nats_server.url,), partitions=4), name="third")  # same shape: fine
    await nc.close()
