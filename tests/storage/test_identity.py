"""Device identity bound to credentials (issue 15 items 1-2): two tenants, gateways and hostile senders."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.core.codecs.binary_records import pulse_record
from usagehub.adapters.base import Outcome, Receipt
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage
from usagehub.core.profiles import parse_profile
from usagehub.errors import DomainError
from usagehub.pipeline import identity
from usagehub.pipeline.pipeline import Pipeline, PipelineSettings
from usagehub.runtime.config import SHIPPED_PROFILES
from usagehub.runtime.profile_files import load_profiles
from usagehub.storage.registry import KnownDevices, Registry

NOW = datetime(2026, 11, 1, tzinfo=UTC)
T0 = NOW - timedelta(days=1)


def _variant(bits: int) -> str:
    text = (SHIPPED_PROFILES / "acme-em340.yaml").read_text()
    return text.replace("id: acme-em340", f"id: em-{bits}bit").replace("wrap_bits: 32", f"wrap_bits: {bits}")


@pytest.fixture
async def pipeline(pool: AsyncConnectionPool) -> Pipeline:
    reg = Registry(pool)
    for tenant in ("A", "B"):
        t = tenant.lower()
        await reg.upsert_device(device_id=f"gw-{t}", tenant=tenant, profile_id="acme-dc100-gateway")
        await reg.upsert_device(device_id=f"hgw-{t}", tenant=tenant, profile_id="acme-http-gateway",
                                secrets={"http_token": f"tok-{t}"})
        await reg.upsert_device(device_id=f"{t}1", tenant=tenant)
        await reg.upsert_device(device_id=f"{t}2", tenant=tenant)
        await reg.upsert_device(device_id=f"em-{t}", tenant=tenant, profile_id="acme-em340")
        await reg.attach_to_gateway(gateway_id=f"gw-{t}", device_ids=[f"{t}1"], tenant=tenant)
        await reg.attach_to_gateway(gateway_id=f"hgw-{t}", device_ids=[f"{t}1"], tenant=tenant)
    await reg.upsert_device(device_id="bare", tenant="A")                       # no profile
    await reg.upsert_device(device_id="panel", tenant="A", profile_id="acme-alarm-ax")
    await reg.upsert_device(device_id="m16", tenant="A", profile_id="em-16bit")
    await reg.upsert_device(device_id="m32", tenant="A", profile_id="em-32bit")
    await reg.upsert_device(device_id="7", tenant="A", profile_id="acme-pulse-bin")
    await reg.upsert_device(device_id="8", tenant="A", profile_id="mbus-heat-meter")
    profiles = [*load_profiles(SHIPPED_PROFILES), parse_profile(_variant(16), "em-16bit.yaml"),
                parse_profile(_variant(32), "em-32bit.yaml")]
    return Pipeline(pool, ProfileSet(profiles), KnownDevices(pool), PipelineSettings(batch_max_wait_ms=5))


async def feed(pipeline: Pipeline, messages: list[RawMessage]) -> list[Receipt]:
    task = asyncio.create_task(pipeline.run())
    try:
        futures = [await pipeline.submit(m) for m in messages]
        return [await f for f in futures]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pipeline.drain()


def gateway_batch(meters: list[str], topic: str = "gateways/gw-a/batch", **meta: str) -> RawMessage:
    field = "kwh" if "device_id" in meta else "energy_wh"  # the HTTP and MQTT gateway profiles differ
    body = {"readings": [{"meter": m, "seq": 1, "ts": T0.isoformat(), field: 50_000_000} for m in meters]}
    transport = "http" if "device_id" in meta else "mqtt"
    return RawMessage(transport=transport, topic=topic, payload=orjson.dumps(body), received_at=NOW, meta=meta)


def reading(device: str, seq: int = 1) -> RawMessage:
    body = {"seq": seq, "ts": T0.isoformat(), "energy_wh": 1000, "boot": 1}
    return RawMessage(transport="mqtt", topic=f"meters/{device}/reading", payload=orjson.dumps(body),
                      received_at=NOW)


async def stored_devices(pool: AsyncConnectionPool) -> list[tuple[str, str]]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT device_id, profile_id FROM events_described ORDER BY 1")
        return [(str(r[0]), str(r[1])) for r in await cur.fetchall()]


def outcome(receipt: Receipt) -> tuple[str, str | None, str | None]:
    return receipt.outcome.value, receipt.reason, receipt.device_id


async def test_gateway_writes_only_the_devices_registered_behind_it(pipeline: Pipeline,
                                                                   pool: AsyncConnectionPool) -> None:
    receipts = await feed(pipeline, [
        gateway_batch(["a1"]),                                  # behind gw-a: accepted
        gateway_batch(["a1", "b1"]),                            # hostile: tenant B's device
        gateway_batch(["a2"]),                                  # same tenant, not behind gw-a
        gateway_batch(["b1"], topic="gateways/gw-b/batch"),     # tenant B's own gateway: accepted
        gateway_batch(["a1"], topic="gateways/gw-b/batch"),     # B's gateway naming A's device
        gateway_batch(["ghost"]),                               # not registered at all
    ])
    assert [outcome(r) for r in receipts] == [
        ("accepted", None, "a1"),
        ("quarantined", identity.NOT_ENTITLED, "b1"),
        ("quarantined", identity.NOT_ENTITLED, "a2"),
        ("accepted", None, "b1"),
        ("quarantined", identity.NOT_ENTITLED, "a1"),
        ("quarantined", identity.UNKNOWN_DEVICE, "ghost"),
    ]
    assert await stored_devices(pool) == [("a1", "acme-dc100-gateway"), ("b1", "acme-dc100-gateway")]


async def test_http_gateway_token_cannot_write_another_tenants_device(pipeline: Pipeline,
                                                                     pool: AsyncConnectionPool) -> None:
    # What the HTTP adapter submits for a request carrying hgw-a's token (meta set from the token).
    meta = {"device_id": "hgw-a", "profile": "acme-http-gateway"}
    receipts = await feed(pipeline, [gateway_batch(["b1"], topic="ingest", **meta),
                                     gateway_batch(["a1"], topic="ingest", **meta)])
    assert [outcome(r) for r in receipts] == [("quarantined", identity.NOT_ENTITLED, "b1"),
                                              ("accepted", None, "a1")]
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT reason, device_id, meta->>'device_id' FROM quarantine")
        assert await cur.fetchall() == [(identity.NOT_ENTITLED, "b1", "hgw-a")]


async def test_registered_profile_decides_decoding(pipeline: Pipeline, pool: AsyncConnectionPool) -> None:
    receipts = await feed(pipeline, [reading("m16"), reading("m32"), reading("em-a"), reading("panel"),
                                     reading("bare"), reading("nobody")])
    assert [outcome(r)[:2] for r in receipts] == [
        ("accepted", None), ("accepted", None), ("accepted", None),
        ("quarantined", identity.PROFILE_MISMATCH),   # an alarm panel writing on a meter topic
        ("quarantined", identity.NO_PROFILE),         # registered without a profile: no door is open
        ("quarantined", identity.UNKNOWN_DEVICE),
    ]
    # Two profiles match meters/{device_id}/reading; each device was decoded by its own (16/32-bit wrap).
    assert await stored_devices(pool) == [("em-a", "acme-em340"), ("m16", "em-16bit"), ("m32", "em-32bit")]


async def test_payload_named_device_must_be_registered_under_the_decoding_profile(
        pipeline: Pipeline, pool: AsyncConnectionPool) -> None:
    def frame(device: int) -> RawMessage:
        return RawMessage(transport="binary", topic="acme-pulse-bin", payload=pulse_record(device=device),
                          received_at=NOW, meta={"profile": "acme-pulse-bin", "port": "1"})

    receipts = await feed(pipeline, [frame(7), frame(8), frame(9)])
    assert [outcome(r) for r in receipts] == [("accepted", None, "7"),
                                              ("quarantined", identity.PROFILE_MISMATCH, "8"),
                                              ("quarantined", identity.UNKNOWN_DEVICE, "9")]


async def test_a_removed_relation_stops_the_gateway_within_the_cache_time(pipeline: Pipeline,
                                                                         pool: AsyncConnectionPool) -> None:
    pipeline.identity.facts._ttl = 0.05
    assert [r.outcome for r in await feed(pipeline, [gateway_batch(["a1"])])] == [Outcome.ACCEPTED]
    assert await Registry(pool).detach_from_gateway(gateway_id="gw-a", device_ids=["a1"], tenant="A") == ["a1"]
    await asyncio.sleep(0.1)
    body = {"readings": [{"meter": "a1", "seq": 2, "ts": T0.isoformat(), "energy_wh": 1}]}
    again = RawMessage(transport="mqtt", topic="gateways/gw-a/batch", payload=orjson.dumps(body), received_at=NOW)
    assert [outcome(r) for r in await feed(pipeline, [again])] == [
        ("quarantined", identity.NOT_ENTITLED, "a1")]


async def _one(pipeline: Pipeline, message: RawMessage) -> Receipt:
    return await (await pipeline.submit(message))


async def test_a_registry_change_counts_when_heard_and_nothing_is_reloaded_before(
        pipeline: Pipeline, pool: AsyncConnectionPool) -> None:
    """Migration 0052: while its listener is connected, the cache keeps facts past ``ttl_s`` until a change."""
    facts = pipeline.identity.facts
    facts._ttl = 0.05
    loads: list[list[str]] = []
    load = facts._load

    async def counted(device_ids: list[str]) -> dict[str, identity.DeviceFacts]:
        loads.append(sorted(device_ids))
        return await load(device_ids)

    facts._load = counted  # type: ignore[method-assign]
    heard = asyncio.Event()
    changed = facts.changed

    def hear(payload: str = "") -> None:
        changed(payload)
        heard.set()

    facts.changed = hear  # type: ignore[method-assign]

    def reading(meter: str, seq: int, gateway: str = "gw-a") -> RawMessage:
        body = {"readings": [{"meter": meter, "seq": seq, "ts": T0.isoformat(), "energy_wh": seq}]}
        return RawMessage(transport="mqtt", topic=f"gateways/{gateway}/batch", payload=orjson.dumps(body),
                          received_at=NOW)

    task = asyncio.create_task(pipeline.run())
    try:
        await asyncio.wait_for(facts.listening.wait(), 10)
        assert (await _one(pipeline, reading("a1", 1))).outcome == Outcome.ACCEPTED
        assert loads == [["gw-a"], ["a1"]]  # the sender, then the device it names
        await asyncio.sleep(0.2)  # four times ttl_s: a deaf cache would reload
        assert (await _one(pipeline, reading("a1", 2))).outcome == Outcome.ACCEPTED
        assert loads == [["gw-a"], ["a1"]]
        # Tenant B's registry changes too: every cache forgets (a change is rare; what changed is not said).
        heard.clear()
        assert await Registry(pool).detach_from_gateway(gateway_id="gw-a", device_ids=["a1"], tenant="A") == ["a1"]
        await asyncio.wait_for(heard.wait(), 10)
        assert outcome(await _one(pipeline, reading("a1", 3))) == (
            "quarantined", identity.NOT_ENTITLED, "a1")
        assert loads[2:] == [["gw-a"], ["a1"]]
        # A hostile gateway of tenant B is refused for A's meter before and after B's registry changes.
        assert outcome(await _one(pipeline, reading("a2", 1, "gw-b"))) == (
            "quarantined", identity.NOT_ENTITLED, "a2")
        heard.clear()
        await Registry(pool).upsert_device(device_id="b9", tenant="B")
        await asyncio.wait_for(heard.wait(), 10)
        assert outcome(await _one(pipeline, reading("a2", 2, "gw-b"))) == (
            "quarantined", identity.NOT_ENTITLED, "a2")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pipeline.drain()
    assert not facts.listening.is_set()  # stopped: entries live ttl_s again


async def test_a_load_that_a_change_overtakes_is_not_kept(pipeline: Pipeline, pool: AsyncConnectionPool) -> None:
    facts = pipeline.identity.facts
    facts.listening.set()  # as if connected: only a change ends an entry
    load = facts._load

    async def overtaken(device_ids: list[str]) -> dict[str, identity.DeviceFacts]:
        found = await load(device_ids)
        facts.changed()  # heard while the load's answer was on its way
        return found

    facts._load = overtaken  # type: ignore[method-assign]
    assert (await facts.get(["a1"]))["a1"] == identity.DeviceFacts(tenant="A", profile_id=None,
                                                                   gateways=frozenset({"gw-a", "hgw-a"}))
    facts._load = load  # type: ignore[method-assign]
    await Registry(pool).detach_from_gateway(gateway_id="gw-a", device_ids=["a1"], tenant="A")
    # Not kept: the next get reads the registry again (a kept answer would still name gw-a).
    assert (await facts.get(["a1"]))["a1"] == identity.DeviceFacts(tenant="A", profile_id=None,
                                                                   gateways=frozenset({"hgw-a"}))


async def test_gateway_relation_is_tenant_scoped(pipeline: Pipeline, pool: AsyncConnectionPool) -> None:
    reg = Registry(pool)
    with pytest.raises(DomainError) as err:
        await reg.attach_to_gateway(gateway_id="gw-a", device_ids=["b2"], tenant="A")
    assert err.value.code == "UNKNOWN_DEVICE"
    with pytest.raises(DomainError):  # tenant B cannot put its device behind A's gateway either
        await reg.attach_to_gateway(gateway_id="gw-a", device_ids=["b2"], tenant="B")
    assert await reg.gateway_devices("gw-a", tenant="B") == []
    assert await reg.detach_from_gateway(gateway_id="gw-a", device_ids=["a1"], tenant="B") == []
    assert await reg.gateway_devices("gw-a", tenant="A") == ["a1"]
