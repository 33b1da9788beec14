"""Usage is read from the session points (migration 0041): no row per reading in usage_entries.

The usage query, the meter view and the usage_entries view read the points' entry origins; they agree
with the billing records, scope to the caller's tenant, and a database migrated from the per-reading table
keeps every entry, unit and correction.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from psycopg_pool import AsyncConnectionPool

from tests.storage.migrate_before import migrate_before
from tests.storage.test_event_meta import empty_database_url  # noqa: F401  (fixture)
from tests.storage.test_sessions_billing import NOW, feed, reading, records, wired
from usagehub.errors import DomainError
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import open_pool
from usagehub.storage.queries import Reads
from usagehub.storage.registry import Registry

DAY = datetime(2026, 11, 19, tzinfo=UTC)  # in the period of NOW (2026-11-21)
MOVE = DAY + timedelta(hours=10, minutes=30)


async def _scalar(pool: AsyncConnectionPool, sql: str) -> object:
    async with pool.connection() as conn:
        row = await (await conn.execute(sql)).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
async def two_tenants(pool: AsyncConnectionPool) -> Registry:
    reg = Registry(pool)
    await reg.upsert_account(account_id="a1", tenant="t1", timezone="Europe/Berlin")
    await reg.upsert_account(account_id="a2", tenant="t1", timezone="UTC")
    await reg.upsert_account(account_id="b1", tenant="t2", timezone="UTC")
    await reg.upsert_device(device_id="m1", tenant="t1", profile_id="acme-em340")
    await reg.upsert_device(device_id="n1", tenant="t2", profile_id="acme-em340")
    await reg.bind(device_id="m1", account_id="a1", valid_from=DAY - timedelta(days=30), tenant="t1")
    await reg.bind(device_id="m1", account_id="a2", valid_from=MOVE, tenant="t1")  # moves mid-interval
    await reg.bind(device_id="n1", account_id="b1", valid_from=DAY - timedelta(days=30), tenant="t2")
    return reg


async def test_usage_is_read_from_the_points_split_at_a_move_scoped_and_equal_to_the_records(
        pool: AsyncConnectionPool, two_tenants: Registry) -> None:
    pipeline, billing = wired(pool)
    hour = [reading("m1", 10 + h, DAY + timedelta(hours=9 + h), 1000 + 1000 * h + 500 * (h == 3)) for h in range(4)]
    # Out of order, with a duplicate: 09:00 1000 Wh, 10:00 2000, 11:00 3000, 12:00 4500.
    await feed(pipeline, [hour[3], hour[0], hour[2], hour[0], hour[1]])
    await feed(pipeline, [reading("n1", 1, DAY, 100), reading("n1", 2, DAY + timedelta(hours=1), 900)])
    reads = Reads(pool)

    async def usage(tenant: str, account: str, bucket: str = "MONTH") -> list[tuple[str, Decimal, str]]:
        got = await reads.usage(tenant=tenant, account_id=account, bucket=bucket, since=DAY - timedelta(days=20),
                                until=DAY + timedelta(days=5), meter=None)
        return [(b.meter, b.quantity, b.unit) for b in got]

    # (10:00, 11:00] is split at the move: half to each account; each interval lands where it starts.
    assert await usage("t1", "a1") == [("energy", Decimal("1.500"), "kWh")]
    assert await usage("t1", "a2") == [("energy", Decimal("2.000"), "kWh")]
    hours = await reads.usage(tenant="t1", account_id="a2", bucket="HOUR", since=DAY, until=DAY + timedelta(days=1),
                              meter="energy")
    assert [(b.start, b.quantity) for b in hours] == [(MOVE - timedelta(minutes=30), Decimal("0.500")),
                                                      (MOVE + timedelta(minutes=30), Decimal("1.500"))]
    # Another tenant's caller reads nothing of these accounts, nor they of its own.
    assert await usage("t2", "a1") == [] and await usage("t2", "a2") == []
    assert await usage("t1", "b1") == []
    assert await usage("t2", "b1") == [("energy", Decimal("0.800"), "kWh")]
    # What the usage query shows is what is billed.
    recs = await records(pool, "a2")
    assert recs["a2/2026-11/energy"][0] == Decimal("2.000")

    # A correction is kept with its reason and flows into usage; another tenant cannot correct the device.
    entry_id, unit = await billing.correct(tenant="t1", device_id="m1", meter="energy", ts=DAY + timedelta(hours=12),
                                           quantity=Decimal("-0.2"), reason="meter swap", author="k9")
    assert unit == "kWh" and entry_id > 0
    with pytest.raises(DomainError):
        await billing.correct(tenant="t2", device_id="m1", meter="energy", ts=DAY, quantity=Decimal(5),
                              reason="hostile", author="x")
    assert await usage("t1", "a2") == [("energy", Decimal("1.800"), "kWh")]

    # The meter view: the device's period total across both accounts, its last reading; none for a stranger.
    views = await billing.inspect(tenant="t1", device_id="m1", account_id=None, search=None)
    assert [(v.meter, v.last_value, v.last_reading_at, v.period_total, v.unit) for v in views] == [
        ("energy", Decimal("4.500"), DAY + timedelta(hours=12), Decimal("3.300"), "kWh")]
    assert views[0].last_received_at == NOW
    assert await billing.inspect(tenant="t2", device_id="m1", account_id=None, search=None) == []

    # The ledger view: one row per entry (the split entry once), the correction with its reason.
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT ts, quantity, unit, entry_kind, reason FROM usage_entries "
                                 "WHERE device_id = 'm1' ORDER BY ts, entry_kind")
        ledger = await cur.fetchall()
    assert ledger == [(DAY + timedelta(hours=10), Decimal("1.000"), "kWh", "usage", None),
                      (DAY + timedelta(hours=11), Decimal("1.000"), "kWh", "usage", None),
                      (DAY + timedelta(hours=12), Decimal("-0.2"), "kWh", "correction", "meter swap"),
                      (DAY + timedelta(hours=12), Decimal("1.500"), "kWh", "usage", None)]
    # A point that is its whole entry leaves the entry's ts and quantity NULL: its own end and value (0049).
    # The pieces of the entry split at the move keep the entry's quantity; readers take both the same way.
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT end_ts, value, coalesce(entry_ts, end_ts), coalesce(entry_quantity, value), "
            "entry_quantity IS NULL FROM session_points WHERE device_id = 'm1' AND kind = 'usage' "
            "AND entry_ref LIKE 'usage%' ORDER BY end_ts")
        stored = await cur.fetchall()
    assert stored == [(DAY + timedelta(hours=10), Decimal("1.000"), DAY + timedelta(hours=10), Decimal("1.000"), True),
                      (MOVE, Decimal("0.500"), DAY + timedelta(hours=11), Decimal("1.000"), False),
                      (DAY + timedelta(hours=11), Decimal("0.500"), DAY + timedelta(hours=11), Decimal("1.000"), False),
                      (DAY + timedelta(hours=12), Decimal("1.500"), DAY + timedelta(hours=12), Decimal("1.500"), True)]
    # Nothing is written per reading but the points: usage_entries is a view.
    assert await _scalar(pool, "SELECT relkind FROM pg_class WHERE relname = 'usage_entries'") == "v"


async def test_a_database_with_per_reading_entries_keeps_every_entry_unit_and_correction(
        empty_database_url: str) -> None:  # noqa: F811
    pool = await open_pool(empty_database_url, min_size=1, max_size=2)
    t = DAY + timedelta(hours=1)
    try:
        async with pool.connection() as conn:  # the database as the release before 0041 left it
            await migrate_before(conn, "0041")
            # A reading's entry split at a move (two points), a pulse meter's entry in Wh, a correction.
            await conn.execute(
                "INSERT INTO usage_entries (entry_id, device_id, meter, ts, quantity, unit, service, entry_kind, "
                "cause_event_id, reason, author) VALUES "
                "(7, 'm1', 'energy', %(t)s, 1.000, 'kWh', 'electricity', 'usage', '11', NULL, NULL), "
                "(8, 'p1', 'pulses', %(t)s, 40, 'Wh', 'electricity', 'usage', 'x', NULL, NULL), "
                "(9, 'm1', 'energy', %(t)s, -0.2, 'kWh', 'electricity', 'correction', 'c:1', 'swap', 'k9')",
                {"t": t})
            await conn.execute(
                "INSERT INTO session_points (account_id, service, device_id, product, kind, aggregation, start_ts, "
                "end_ts, value, entry_ref, entry_since, entry_ts, entry_quantity) VALUES "
                "('a1', 'electricity', 'm1', 'energy', 'usage', 'sum', %(s)s, %(m)s, 0.500, "
                " E'usage\\x1fenergy\\x1f11', %(s)s, %(t)s, 1.000), "
                "('a2', 'electricity', 'm1', 'energy', 'usage', 'sum', %(m)s, %(t)s, 0.500, "
                " E'usage\\x1fenergy\\x1f11', %(s)s, %(t)s, 1.000), "
                "('a1', 'electricity', 'p1', 'pulses', 'usage', 'sum', %(t)s, %(t)s, 40, "
                " E'usage\\x1fpulses\\x1fx', NULL, %(t)s, 40), "
                "('a2', 'electricity', 'm1', 'energy', 'usage', 'sum', %(t)s, %(t)s, -0.2, "
                " E'correction\\x1fenergy\\x1fc:1', NULL, %(t)s, -0.2), "
                "('a2', 'electricity', 'g1', 'power', 'gauge', 'max', %(t)s, %(t)s, 3.5, NULL, NULL, NULL, NULL)",
                {"s": t - timedelta(hours=1), "m": t - timedelta(minutes=30), "t": t})
        assert "0041_usage_from_points" in await migrate(pool)
        async with pool.connection() as conn:
            units = await (await conn.execute(
                "SELECT device_id, entry_unit FROM session_points ORDER BY point_id")).fetchall()
            ledger = await (await conn.execute(
                "SELECT device_id, meter, ts, quantity, unit, entry_kind, cause_event_id, reason, author "
                "FROM usage_entries ORDER BY device_id, entry_kind")).fetchall()
            corrections = await (await conn.execute(
                "SELECT entry_id, correction_id, reason, author FROM usage_corrections")).fetchall()
            next_id = await (await conn.execute(
                "INSERT INTO usage_corrections (device_id, meter, ts, quantity, unit, service, correction_id, "
                "reason, author) VALUES ('m1', 'energy', now(), 1, 'kWh', 'electricity', 'c:2', 'r', 'a') "
                "RETURNING entry_id")).fetchone()
        assert units == [("m1", "kWh"), ("m1", "kWh"), ("p1", "Wh"), ("m1", "kWh"), ("g1", None)]
        assert ledger == [("m1", "energy", t, Decimal("-0.2"), "kWh", "correction", "c:1", "swap", "k9"),
                          ("m1", "energy", t, Decimal("1.000"), "kWh", "usage", "11", None, None),
                          ("p1", "pulses", t, Decimal("40"), "Wh", "usage", "x", None, None)]
        assert corrections == [(9, "c:1", "swap", "k9")]
        assert next_id is not None and next_id[0] > 9  # ids already returned are never handed out again
    finally:
        await pool.close()
