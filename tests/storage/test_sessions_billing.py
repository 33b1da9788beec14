"""Sessions and billing records kept by the ingest hook, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from usagehub.billing.service import BillingService
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage
from usagehub.errors import DomainError
from usagehub.pipeline.pipeline import Pipeline, PipelineSettings
from usagehub.pipeline.sessions import SessionEngine
from usagehub.pipeline.usage import UsageWriter
from usagehub.runtime.config import SHIPPED_PROFILES
from usagehub.runtime.profile_files import load_profiles
from usagehub.storage.registry import KnownDevices, Registry

NOW = datetime(2026, 11, 21, 12, tzinfo=UTC)
OCT = datetime(2026, 10, 1, tzinfo=UTC)


def wired(pool: AsyncConnectionPool) -> tuple[Pipeline, BillingService]:
    """The pipeline as build_pipeline wires it, with a fixed clock."""
    profiles = ProfileSet(load_profiles(SHIPPED_PROFILES))
    pipeline = Pipeline(pool, profiles, KnownDevices(pool), PipelineSettings(batch_max_wait_ms=5))
    usage = UsageWriter(profiles)
    engine = SessionEngine(profiles, entries=lambda: usage.last_entries, clock=lambda: NOW)
    pipeline.hooks += [usage.apply, engine.apply]
    return pipeline, BillingService(pool, engine)


def reading(device: str, seq: int, ts: datetime, wh: int) -> RawMessage:
    body = {"seq": seq, "ts": ts.isoformat(), "energy_wh": wh, "boot": 1}
    return RawMessage(transport="mqtt", topic=f"meters/{device}/reading", payload=orjson.dumps(body), received_at=NOW)


def alarm(device: str, ident: str, ts: datetime, kind: str = "alarm") -> RawMessage:
    body = {"id": ident, "t": int(ts.timestamp() * 1000), "type": kind}
    return RawMessage(transport="mqtt", topic=f"security/{device}/event", payload=orjson.dumps(body), received_at=NOW)


async def feed(pipeline: Pipeline, messages: list[RawMessage]) -> None:
    task = asyncio.create_task(pipeline.run())
    try:
        futures = [await pipeline.submit(m) for m in messages]
        for f in futures:
            await f
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pipeline.drain()


async def records(pool: AsyncConnectionPool, account: str) -> dict[str, tuple[Decimal, str, str, int]]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT record_id, quantity, status, kind, version FROM billing_records "
                                 "WHERE account_id = %s", (account,))
        return {str(r[0]): (Decimal(r[1]), str(r[2]), str(r[3]), int(r[4]))  # type: ignore[call-overload]
                for r in await cur.fetchall()}


@pytest.fixture
async def registry(pool: AsyncConnectionPool) -> Registry:
    reg = Registry(pool)
    await reg.upsert_account(account_id="a1", timezone="Europe/Berlin")
    await reg.upsert_account(account_id="a2", timezone="UTC")
    for dev, profile in (("m1", "acme-em340"), ("m2", "acme-em340"), ("ax", "acme-alarm-ax")):
        await reg.upsert_device(device_id=dev, profile_id=profile)
    for dev in ("m1", "ax"):
        await reg.bind(device_id=dev, account_id="a1", valid_from=OCT - timedelta(days=60))
    return reg


async def test_late_data_amends_open_record_then_adjusts_a_billed_one(
        pool: AsyncConnectionPool, registry: Registry) -> None:
    pipeline, billing = wired(pool)
    day = [OCT + timedelta(days=d, hours=10) for d in range(31)]  # 10:00Z: inside October in Berlin
    await feed(pipeline, [reading("m1", d, day[d], 1000 * d) for d in (0, 10, 20)])
    assert await records(pool, "a1") == {"a1/2026-10/energy": (Decimal(20), "open", "regular", 1)}
    # A late reading between known ones splits a delta: same total, no new version.
    await feed(pipeline, [reading("m1", 5, day[5], 4000)])
    assert (await records(pool, "a1"))["a1/2026-10/energy"][:2] == (Decimal(20), "open")
    # A late reading after the last one amends the open record (a new version).
    await feed(pipeline, [reading("m1", 25, day[25], 26000)])
    assert await records(pool, "a1") == {"a1/2026-10/energy": (Decimal(26), "open", "regular", 2)}

    billed = await billing.mark_billed(tenant="default", record_ids=["a1/2026-10/energy"], author="k1")
    assert [r.status.value for r in billed] == ["billed"]
    before = (await records(pool, "a1"))["a1/2026-10/energy"]
    assert before[:2] == (Decimal(26), "billed")

    # Days late: October usage after the bill -> an adjustment in November; the bill is untouched.
    await feed(pipeline, [reading("m1", 30, day[30], 30500)])
    after = await records(pool, "a1")
    assert after["a1/2026-10/energy"] == before
    assert after["a1/2026-10/energy/adj/2026-11"] == (Decimal("4.5"), "open", "adjustment", 1)
    # Another late one amends the pending adjustment instead of adding a second one.
    await feed(pipeline, [reading("m1", 28, day[28], 28000)])  # inside a known delta: total unchanged
    await feed(pipeline, [reading("m1", 31, day[30] + timedelta(hours=1), 31000)])
    after = await records(pool, "a1")
    assert after["a1/2026-10/energy"] == before
    assert after["a1/2026-10/energy/adj/2026-11"][:3] == (Decimal("5"), "open", "adjustment")
    truth = Decimal(31)  # 31000 Wh above the 0 Wh baseline, all in October
    assert after["a1/2026-10/energy"][0] + after["a1/2026-10/energy/adj/2026-11"][0] == truth

    # The database itself refuses to edit a billed record.
    async with pool.connection() as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            await conn.execute("UPDATE billing_records SET quantity = 1, version = version + 1 "
                               "WHERE record_id = 'a1/2026-10/energy'")


async def test_billing_run_and_period_not_ended(pool: AsyncConnectionPool, registry: Registry) -> None:
    pipeline, billing = wired(pool)
    await feed(pipeline, [
        reading("m1", 1, OCT + timedelta(hours=5), 0), reading("m1", 2, OCT + timedelta(days=3), 700),
        alarm("ax", "e1", OCT + timedelta(days=2)), alarm("ax", "e2", OCT + timedelta(days=2, hours=1)),
        alarm("ax", "e3", NOW - timedelta(hours=1))])
    recs = await records(pool, "a1")
    assert recs["a1/2026-10/alarms"][0] == 2 and recs["a1/2026-11/alarms"][0] == 1
    with pytest.raises(DomainError) as err:
        await billing.run(tenant="default", period="2026-11", account_id="a1", author="k")
    assert err.value.code == "PERIOD_NOT_ENDED"
    with pytest.raises(DomainError):
        await billing.mark_billed(tenant="default", record_ids=["a1/2026-11/alarms"], author="k")
    billed = await billing.run(tenant="default", period="2026-10", account_id="a1", author="k")
    assert sorted(r.record_id for r in billed) == ["a1/2026-10/alarms", "a1/2026-10/energy"]
    recs = await records(pool, "a1")
    assert recs["a1/2026-10/energy"] == (Decimal("0.7"), "billed", "regular", 3)
    assert recs["a1/2026-11/alarms"][1] == "open"
    # A late October alarm after the run lands as an adjustment in the next open period.
    await feed(pipeline, [alarm("ax", "e0", OCT + timedelta(days=1))])
    recs = await records(pool, "a1")
    assert recs["a1/2026-10/alarms"][:2] == (Decimal(2), "billed")
    assert recs["a1/2026-10/alarms/adj/2026-11"][:3] == (Decimal(1), "open", "adjustment")
    # A correction is a new entry with reason and author, and flows into the records.
    entry_id, unit = await billing.correct(tenant="default", device_id="m1", meter="energy",
                                           ts=OCT + timedelta(days=4), quantity=Decimal("-0.2"),
                                           reason="meter swap", author="k9")
    assert unit == "kWh" and entry_id > 0
    recs = await records(pool, "a1")
    assert recs["a1/2026-10/energy/adj/2026-11"][:3] == (Decimal("-0.2"), "open", "adjustment")
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT quantity, reason, author FROM usage_corrections WHERE entry_id = %s",
                                 (entry_id,))
        assert await cur.fetchone() == (Decimal("-0.2"), "meter swap", "k9")
        # The usage ledger view shows it once, with its reason, beside the entries of the points.
        cur = await conn.execute("SELECT entry_kind, quantity, reason FROM usage_entries WHERE device_id = 'm1' "
                                 "AND entry_kind = 'correction'")
        assert await cur.fetchall() == [("correction", Decimal("-0.2"), "meter swap")]
    sessions = await billing.sessions(tenant="default", account_id="a1", since=None, until=None, after=None,
                                      limit=50)
    assert {s.service for _, s in sessions} == {"electricity", "security"}
    views = await billing.inspect(tenant="default", device_id="m1", account_id=None, search=None)
    assert [(v.meter, v.last_value) for v in views] == [("energy", Decimal("0.7"))]


async def test_device_rebound_at_t_bills_to_new_account_from_t(pool: AsyncConnectionPool,
                                                              registry: Registry) -> None:
    t = datetime(2026, 10, 15, tzinfo=UTC)
    await registry.bind(device_id="m2", account_id="a1", valid_from=OCT - timedelta(days=1))
    await registry.bind(device_id="m2", account_id="a2", valid_from=t)   # closes the a1 binding at t
    await registry.bind(device_id="ax", account_id="a2", valid_from=t)
    pipeline, _ = wired(pool)
    noon = [OCT + timedelta(days=d, hours=12) for d in range(31)]
    msgs = [reading("m2", d, noon[d], 1000 * d) for d in range(31)]
    msgs += [alarm("ax", "before", t - timedelta(seconds=1)), alarm("ax", "at", t)]
    await feed(pipeline, list(reversed(msgs)))  # out of order on purpose
    a1, a2 = await records(pool, "a1"), await records(pool, "a2")
    # (14 Oct 12:00, 15 Oct 12:00] is cut at t: half a day each side.
    assert a1["a1/2026-10/energy"][0] == Decimal("13.5")
    assert a2["a2/2026-10/energy"][0] == Decimal("16.5")
    assert a1["a1/2026-10/alarms"][0] == 1 and a2["a2/2026-10/alarms"][0] == 1


async def test_graphql_billing_fields(pool: AsyncConnectionPool, registry: Registry) -> None:
    from usagehub.graphql.context import Context, Services
    from usagehub.graphql.schema import build_schema
    from usagehub.storage.keys import Principal
    from usagehub.storage.queries import Reads

    pipeline, billing = wired(pool)
    await feed(pipeline, [reading("m1", d, OCT + timedelta(days=d, hours=10), 500 * d) for d in range(6)])
    schema = build_schema()
    services = Services(registry=registry, reads=Reads(pool), ingest_totals={}, replay=None, extra={},  # type: ignore[arg-type]
                        billing=billing)

    async def run(query: str, role: str = "billing") -> dict[str, object]:
        ctx = Context(services=services, principal=Principal(key_id=f"key-{role}", role=role, tenant="default"))
        result = await schema.execute(query, context_value=ctx)
        if result.errors:
            return {"error": result.errors[0].extensions}
        assert result.data is not None
        return result.data

    data = await run('{ sessions(accountId: "a1", first: 2) { edges { node { service aggregates { product value } } } '
                     'pageInfo { hasNextPage } } }')
    # Back-to-back register deltas are one continuous session.
    assert data == {"sessions": {"edges": [{"node": {"service": "electricity", "aggregates": [
        {"product": "energy", "value": "2.500"}]}}], "pageInfo": {"hasNextPage": False}}}
    assert await run('mutation { markBilled(recordIds: ["a1/2026-10/energy"]) { id } }', "analytics") == {
        "error": {"code": "FORBIDDEN"}}
    billed = await run('mutation { markBilled(recordIds: ["a1/2026-10/energy"]) { id status quantity } }')
    assert billed == {"markBilled": [{"id": "a1/2026-10/energy", "status": "billed", "quantity": "2.500"}]}
    fix = await run('mutation { submitCorrection(deviceId: "m1", meter: "energy", ts: "2026-10-03T00:00:00Z", '
                    'quantity: "0.25", reason: "estimated gap") { author unit } }', "operator")
    assert fix == {"submitCorrection": {"author": "key-operator", "unit": "kWh"}}
    recs = await run('{ billingRecords(accountId: "a1", status: "open") { edges { node { id kind quantity } } } }')
    assert recs == {"billingRecords": {"edges": [{"node": {"id": "a1/2026-10/energy/adj/2026-11",
                                                          "kind": "adjustment", "quantity": "0.250"}}]}}
    inspect = await run('{ meterInspection(accountId: "a1") { deviceId meter lastValue period } }')
    assert inspect == {"meterInspection": [{"deviceId": "m1", "meter": "energy", "lastValue": "2.500",
                                            "period": "2026-11"}]}
    drill = await run('{ billingRecord(id: "a1/2026-10/energy/adj/2026-11") { sessions(first: 1) { edges { node '
                      '{ events(first: 2) { edges { node { eventId } } pageInfo { hasNextPage } } } } } } }')
    node = drill["billingRecord"]["sessions"]["edges"][0]["node"]  # type: ignore[index]
    assert len(node["events"]["edges"]) >= 1


async def test_inspection_reports_each_meter_kind_as_its_record_does(pool: AsyncConnectionPool,
                                                                    registry: Registry) -> None:
    pipeline, billing = wired(pool)
    nov = datetime(2026, 11, 10, tzinfo=UTC)

    def power(seq: int, ts: datetime, wh: int, w: int) -> RawMessage:
        body = {"seq": seq, "ts": ts.isoformat(), "energy_wh": wh, "power_w": w, "boot": 1}
        return RawMessage(transport="mqtt", topic="meters/m1/reading", payload=orjson.dumps(body), received_at=NOW)

    def state(ident: str, ts: datetime, value: str) -> RawMessage:
        body = {"id": ident, "t": int(ts.timestamp() * 1000), "type": "state", "state": value}
        return RawMessage(transport="mqtt", topic="security/ax/event", payload=orjson.dumps(body), received_at=NOW)

    await feed(pipeline, [power(1, nov, 1000, 1200), power(2, nov + timedelta(hours=1), 2500, 3711),
                          power(3, nov + timedelta(hours=2), 2600, 800),
                          state("s1", nov, "armed_away"), state("s2", nov + timedelta(seconds=25.5), "disarmed"),
                          alarm("ax", "a1", nov + timedelta(minutes=5), "door_open")])
    recs = await records(pool, "a1")
    views = {(v.device_id, v.meter): v.period_total
             for v in await billing.inspect(tenant="default", device_id=None, account_id="a1", search=None)}
    assert views[("m1", "energy")] == Decimal("1.6")                 # cumulative: summed usage
    assert views[("m1", "power")] == Decimal("3.711") == recs["a1/2026-11/power"][0]     # gauge: max kW
    assert views[("ax", "armed")] == Decimal("25.5") == recs["a1/2026-11/armed"][0]      # state: seconds
    assert views[("ax", "door_openings")] == 1                       # event: a count
    # Another tenant sees none of it.
    assert await billing.inspect(tenant="t2", device_id=None, account_id="a1", search=None) == []
