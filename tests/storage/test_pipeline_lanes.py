"""Commit lanes: batches of two lanes in flight at once store exactly what one lane stores.

The fleet's meter m1 takes one lane, m2 and the panel ax the other (``lane_index`` of the device
id); m1 and ax share account a1, so the lanes meet on its locks.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import orjson
from psycopg_pool import AsyncConnectionPool

from tests.storage.test_session_queue import _derived, _fleet, _seed, second_pool  # noqa: F401
from tests.storage.test_sessions_billing import NOW, feed, wired
from usagehub.core.events import RawMessage, UsageEvent
from usagehub.pipeline.pipeline import Pipeline, PipelineSettings, lane_index
from usagehub.storage.pool import Connection


def _with_lanes(pool: AsyncConnectionPool, lanes: int) -> Pipeline:
    pipeline, _ = wired(pool)
    settings = PipelineSettings(batch_max_wait_ms=5, batch_max_messages=40, commit_lanes=lanes)
    fresh = Pipeline(pool, pipeline.profiles, pipeline.devices, settings)
    fresh.hooks = pipeline.hooks
    return fresh


async def _stored(pool: AsyncConnectionPool) -> dict[str, Any]:
    """What must not depend on how messages fell into batches (entries and walk marks may: a late reading
    splits a delta into pieces, so only their sums are compared)."""
    derived = await _derived(pool)
    out: dict[str, Any] = {"records": derived["records"]}
    async with pool.connection() as conn:
        for name, sql in (
                ("entries", "SELECT device_id, meter, sum(quantity) FROM usage_entries GROUP BY 1, 2 ORDER BY 1, 2"),
                ("sessions", "SELECT account_id, service, start_ts, end_ts, closed_reason FROM sessions "
                             "ORDER BY 1, 2, 3"),
                ("events", "SELECT count(*) FROM events"),
                ("totals", "SELECT sum(messages), sum(accepted), sum(duplicates), sum(quarantined) "
                           "FROM ingest_totals")):
            out[name] = await (await conn.execute(sql)).fetchall()  # type: ignore[arg-type]
    return out


async def test_two_lanes_store_what_one_lane_stores(pool: AsyncConnectionPool,
                                                      second_pool: AsyncConnectionPool) -> None:  # noqa: F811
    messages = [m for chunk in _fleet() for m in chunk]
    await _seed(second_pool)
    await feed(_with_lanes(second_pool, 1), messages)
    expected = await _stored(second_pool)
    await _seed(pool)
    await feed(_with_lanes(pool, 2), messages)  # all at once: batches of both lanes overlap
    assert await _stored(pool) == expected
    assert expected["events"][0][0] > 400 and expected["records"]


async def test_lanes_overlap_and_keep_each_device_in_one_lane(pool: AsyncConnectionPool) -> None:
    await _seed(pool)
    active: list[set[str]] = []
    seen_together = 0

    async def slow_hook(conn: Connection, events: Sequence[UsageEvent]) -> None:
        nonlocal seen_together
        devices = {e.device_id for e in events}
        for other in active:
            assert not other & devices, "one device in two batches in flight"
            seen_together += 1
        active.append(devices)
        try:
            await asyncio.sleep(0.03)  # as a round trip to the database would
        finally:
            active.remove(devices)

    messages = [m for chunk in _fleet() for m in chunk]
    pipeline = _with_lanes(pool, 2)
    keys = {pipeline.identity.lane_key(m) for m in messages}
    assert keys == {"m1", "m2", "ax"}  # the device its topic names
    assert len({lane_index(k, 2) for k in keys if k}) == 2  # the fleet's devices are spread over both lanes
    pipeline.hooks = [slow_hook]
    await feed(pipeline, messages)
    assert seen_together > 0  # the two lanes' batches were in flight at the same time

    single = _with_lanes(pool, 1)
    single.hooks = [slow_hook]
    seen_together = 0
    await feed(single, messages)
    assert seen_together == 0


def test_gateway_messages_go_by_their_gateway(pool: AsyncConnectionPool) -> None:
    """A gateway's readings name their devices in the payload: its messages keep their order in one lane,
    chosen by the gateway (its topic, or the identity its door authenticated)."""
    pipeline = _with_lanes(pool, 2)
    gateway = RawMessage(transport="mqtt", topic="gateways/g3/batch", payload=b"{}", received_at=NOW)
    meter = RawMessage(transport="mqtt", topic="meters/m1/reading", payload=b"{}", received_at=NOW)
    assert pipeline.identity.lane_key(gateway) == "gateways/g3/batch"
    assert pipeline.identity.lane_key(meter) == "m1"
    assert pipeline.identity.names_devices_in_payload(gateway)
    assert not pipeline.identity.names_devices_in_payload(meter)
    http = RawMessage(transport="http", topic="ingest", payload=b"{}", received_at=NOW,
                      meta={"device_id": "g3", "profile": "acme-http-gateway"})
    assert pipeline.identity.names_devices_in_payload(http)
    assert pipeline.identity.lane_key(http) == "g3"


_GATEWAYS = {"m1": ("gateways/gw-f1/batch", "gateways/gw-f2/batch"),
             "m2": ("gateways/gw-b1/batch", "gateways/gw-b2/batch")}


def _through_gateways(rng: random.Random) -> list[RawMessage]:
    """The fleet's meter readings relayed by two gateways per meter (each reading by either), a few per
    message, in the fleet's shuffled, duplicated and late order; the panel's alarms as they are."""
    out: list[RawMessage] = []
    pending: dict[str, list[dict[str, Any]]] = {}
    for m in (m for chunk in _fleet() for m in chunk):
        if not m.topic.startswith("meters/"):
            out.append(m)
            continue
        device = m.topic.split("/")[1]
        topic = rng.choice(_GATEWAYS[device])
        pending.setdefault(topic, []).append({"meter": device, **orjson.loads(m.payload)})
        if len(pending[topic]) >= rng.randint(1, 6):
            body = {"readings": pending.pop(topic)}
            out.append(RawMessage(transport="mqtt", topic=topic, payload=orjson.dumps(body), received_at=NOW))
    out += [RawMessage(transport="mqtt", topic=topic, payload=orjson.dumps({"readings": rows}), received_at=NOW)
            for topic, rows in pending.items()]
    return out


async def _seed_gateways(pool: AsyncConnectionPool) -> None:
    reg = await _seed(pool)
    for device, tenant in (("m1", "t1"), ("m2", "t2")):  # decoded by the gateway's profile: registered so
        await reg.upsert_device(device_id=device, profile_id="acme-dc100-gateway", tenant=tenant)
        for topic in _GATEWAYS[device]:
            gateway = topic.split("/")[1]
            await reg.upsert_device(device_id=gateway, profile_id="acme-dc100-gateway", tenant=tenant)
            await reg.attach_to_gateway(gateway_id=gateway, device_ids=[device], tenant=tenant)


async def test_two_lanes_store_what_one_lane_stores_when_two_gateways_relay_one_meter(
        pool: AsyncConnectionPool, second_pool: AsyncConnectionPool) -> None:  # noqa: F811
    messages = _through_gateways(random.Random(5))
    lanes = {topic: lane_index(topic, 2) for pair in _GATEWAYS.values() for topic in pair}
    assert all(lanes[a] != lanes[b] for a, b in _GATEWAYS.values())  # each meter is written by both lanes
    await _seed_gateways(second_pool)
    await feed(_with_lanes(second_pool, 1), messages)
    expected = await _stored(second_pool)
    await _seed_gateways(pool)
    await feed(_with_lanes(pool, 2), messages)  # all at once: both lanes hold batches of m1 and m2
    assert await _stored(pool) == expected
    assert expected["events"][0][0] > 400 and expected["records"]
    assert expected["totals"][0][3] == 0  # every gateway was entitled to its meter: nothing quarantined
