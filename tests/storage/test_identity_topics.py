"""Gateways named in the topic (wM-Bus radio gateways, Sparkplug edge nodes): two tenants, hostile publishers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from psycopg_pool import AsyncConnectionPool

from tests.core.codecs.wmbus_vectors import type_f
from tests.storage.test_identity import feed, outcome, stored_devices
from usagehub.core.codecs.sparkplug import Payload
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage
from usagehub.pipeline import identity
from usagehub.pipeline.pipeline import Pipeline, PipelineSettings
from usagehub.runtime.config import SHIPPED_PROFILES
from usagehub.runtime.profile_files import load_profiles
from usagehub.storage.registry import KnownDevices, Registry

NOW = datetime(2026, 11, 1, tzinfo=UTC)
T0 = NOW - timedelta(days=1)
METERS = {"A": "11111111", "B": "22222222"}  # wM-Bus meter ids are 8 BCD digits


@pytest.fixture
async def pipeline(pool: AsyncConnectionPool) -> Pipeline:
    reg = Registry(pool)
    for tenant, meter in METERS.items():
        t = tenant.lower()
        await reg.upsert_device(device_id=f"radio-{t}", tenant=tenant, profile_id="oms-meter-mqtt")
        await reg.upsert_device(device_id=meter, tenant=tenant, profile_id="oms-meter-mqtt")
        await reg.attach_to_gateway(gateway_id=f"radio-{t}", device_ids=[meter], tenant=tenant)
        await reg.upsert_device(device_id=f"edge-{t}", tenant=tenant)
        await reg.upsert_device(device_id=f"sp-{t}1", tenant=tenant, profile_id="sparkplug-energy-meter")
        await reg.upsert_device(device_id=f"sp-{t}2", tenant=tenant, profile_id="sparkplug-energy-meter")
        await reg.attach_to_gateway(gateway_id=f"edge-{t}", device_ids=[f"sp-{t}1"], tenant=tenant)
    await reg.upsert_device(device_id="33333333", tenant="A", profile_id="oms-meter-mqtt")  # behind no gateway
    return Pipeline(pool, ProfileSet(load_profiles(SHIPPED_PROFILES)), KnownDevices(pool),
                    PipelineSettings(batch_max_wait_ms=5))


def clear_telegram(gateway: str, meter: str, litres: int = 1000) -> RawMessage:
    """An unencrypted (security mode 0) OMS telegram as a radio gateway publishes it: it proves nothing by itself."""
    plain = b"\x0c\x13" + bytes.fromhex(f"{litres:08d}")[::-1] + b"\x04\x6d" + type_f(2026, 10, 31, 12, 0)
    body = b"\x44\x93\x15" + bytes.fromhex(meter)[::-1] + b"\x01\x07\x7a\x01\x00\x00\x00" + plain
    return RawMessage(transport="mqtt", topic=f"wmbus/{gateway}/telegram",
                      payload=(bytes([len(body)]) + body).hex().upper().encode(), received_at=NOW)


def sparkplug(edge: str, device: str) -> RawMessage:
    """A device's data as the Sparkplug adapter submits it (aliases already resolved to names)."""
    payload = Payload(timestamp=int(T0.timestamp() * 1000), seq=1)
    metric = payload.metrics.add()
    metric.name, metric.datatype, metric.double_value = "Energy/Import kWh", 10, 50_000.0
    return RawMessage(transport="sparkplug", topic=f"spBv1.0/plant/DDATA/{edge}/{device}",
                      payload=bytes(payload.SerializeToString()), received_at=NOW)


async def test_a_radio_gateway_reports_only_the_meters_behind_it(pipeline: Pipeline,
                                                                 pool: AsyncConnectionPool) -> None:
    receipts = await feed(pipeline, [
        clear_telegram("radio-a", METERS["A"]),       # behind radio-a: accepted
        clear_telegram("radio-a", METERS["B"]),       # hostile: tenant B's meter heard by A's gateway
        clear_telegram("radio-a", "33333333"),        # same tenant, behind no gateway
        clear_telegram("radio-b", METERS["B"]),       # B's own gateway: accepted
        clear_telegram("ghost", METERS["A"]),         # a gateway that is not registered
    ])
    assert [outcome(r) for r in receipts] == [
        ("accepted", None, METERS["A"]),
        ("quarantined", identity.NOT_ENTITLED, METERS["B"]),
        ("quarantined", identity.NOT_ENTITLED, "33333333"),
        ("accepted", None, METERS["B"]),
        ("quarantined", identity.UNKNOWN_DEVICE, "ghost"),
    ]
    assert await stored_devices(pool) == [(METERS["A"], "oms-meter-mqtt"), (METERS["B"], "oms-meter-mqtt")]


async def test_an_edge_node_writes_only_the_devices_behind_it(pipeline: Pipeline, pool: AsyncConnectionPool) -> None:
    receipts = await feed(pipeline, [
        sparkplug("edge-a", "sp-a1"),     # behind edge-a: accepted
        sparkplug("edge-a", "sp-b1"),     # hostile: tenant B's device under A's edge node
        sparkplug("edge-a", "sp-a2"),     # same tenant, not behind edge-a
        sparkplug("edge-b", "sp-a1"),     # B's edge node naming A's device
        sparkplug("ghost", "sp-a1"),      # an edge node that is not registered
        sparkplug("edge-b", "sp-b1"),     # B's own: accepted
    ])
    assert [outcome(r) for r in receipts] == [
        ("accepted", None, "sp-a1"),
        ("quarantined", identity.NOT_ENTITLED, "sp-b1"),
        ("quarantined", identity.NOT_ENTITLED, "sp-a2"),
        ("quarantined", identity.NOT_ENTITLED, "sp-a1"),
        ("quarantined", identity.NOT_ENTITLED, "sp-a1"),
        ("accepted", None, "sp-b1"),
    ]
    assert await stored_devices(pool) == [("sp-a1", "sparkplug-energy-meter"), ("sp-b1", "sparkplug-energy-meter")]
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT DISTINCT reason FROM quarantine")
        assert await cur.fetchall() == [(identity.NOT_ENTITLED,)]
