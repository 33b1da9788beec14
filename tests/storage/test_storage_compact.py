"""Migration 0019: packed indexes of finished event months, and the index-only account-month billing read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.storage.analytics_data import add_accounts, copy_points
from usagehub.core.periods import Period
from usagehub.storage.partitions import partitioned
from usagehub.storage.rating_usage import USAGE_POINTS_SQL, usage_points
from usagehub.storage.retention_pack import pack_finished_months

JAN = datetime(2026, 1, 1, tzinfo=UTC)
FEB = datetime(2026, 2, 1, tzinfo=UTC)
# A fleet's day at a time, as ingest writes it: every device's key range grows a little each day.
EVENTS = """
INSERT INTO events (device_id, meter, ts, event_id, value, meta_id, received_at)
SELECT 'dev-' || lpad(d::text, 4, '0'), 'energy', t, extract(epoch FROM t)::bigint::text, 1, meta.id, t
FROM (SELECT event_meta_id('kWh', 'cumulative', 'acme-em340', 'electricity') AS id) meta,
     generate_series(1, 40) d, generate_series(%s::timestamptz, %s::timestamptz + interval '23 hours 45 minutes',
                                               interval '15 minutes') t
ON CONFLICT DO NOTHING"""


async def _scalar(pool: AsyncConnectionPool, query: str, *params: object) -> object:
    async with pool.connection() as conn:
        row = await (await conn.execute(query, params)).fetchone()
    return row[0] if row else None


async def _load_january(pool: AsyncConnectionPool) -> None:
    async with pool.connection() as conn:
        for month in (JAN.date(), FEB.date()):
            await conn.execute("SELECT ensure_event_partition(%s)", (month,))
        for day in range(31):
            start = JAN + timedelta(days=day)
            await conn.execute(EVENTS, (start, start))


async def test_finished_months_are_packed_once_and_keep_identity(pool: AsyncConnectionPool) -> None:
    await _load_january(pool)
    async with pool.connection() as conn:
        plain = await partitioned(conn)
    assert await pack_finished_months(pool, FEB + timedelta(days=1)) == []  # January may still get late data
    if plain:  # what an interrupted REINDEX CONCURRENTLY leaves: an invalid *_ccnew index, dropped before packing
        async with pool.connection() as conn:
            with pytest.raises(psycopg.errors.UniqueViolation):
                await conn.execute("CREATE UNIQUE INDEX CONCURRENTLY events_2026_01_pkey_ccnew "
                                   "ON events_2026_01 (meter)")
            assert await _scalar(pool, "SELECT count(*) FROM pg_index WHERE NOT indisvalid "
                                       "AND indrelid = 'events_2026_01'::regclass") == 1
    packed = await pack_finished_months(pool, FEB + timedelta(days=4))
    if not plain:  # TimescaleDB compresses old chunks instead: nothing to pack
        assert packed == []
        assert await _scalar(pool, "SELECT count(*) FROM events_packed") == 0
        return
    assert packed == ["events_2026_01"]  # February is not over
    before, after = await _scalar(pool, "SELECT array[bytes_before, bytes_after] FROM events_packed")  # type: ignore[misc]
    assert after < before * 0.75, (before, after)
    assert after == await _scalar(pool, "SELECT pg_indexes_size('events_2026_01')")
    assert await _scalar(pool, "SELECT count(*) FROM pg_index WHERE indrelid = 'events_2026_01'::regclass") == 1
    assert await pack_finished_months(pool, FEB + timedelta(days=40)) == ["events_2026_02"]
    assert await pack_finished_months(pool, FEB + timedelta(days=40)) == []
    # The rebuilt key still refuses a replay, and a late event still lands in its month.
    async with pool.connection() as conn:
        replay = await conn.execute(EVENTS, (JAN + timedelta(days=3), JAN + timedelta(days=3)))
        assert replay.rowcount == 0
        late = await conn.execute(
            "INSERT INTO events (device_id, meter, ts, event_id, value, meta_id, received_at) "
            "VALUES ('dev-0001', 'energy', %s, 'late', 2, event_meta_id('kWh', 'cumulative', 'acme-em340', "
            "'electricity'), now()) ON CONFLICT DO NOTHING", (JAN + timedelta(days=5, seconds=1),))
        assert late.rowcount == 1
    assert await _scalar(pool, "SELECT count(*) FROM events_2026_01") == 40 * 96 * 31 + 1


async def test_account_month_billing_read_is_index_only(pool: AsyncConnectionPool) -> None:
    await add_accounts(pool, {"acc-a": "UTC", "acc-b": "Europe/Berlin"})
    rows = []
    for n in range(2 * 96 * 59):  # two accounts, two devices each, 15-minute points over January and February
        start = JAN + timedelta(minutes=15 * (n // 2))
        for account in ("acc-a", "acc-b"):
            device = f"{account}-dev{n % 2}"
            rows.append((account, "electricity", device, "energy", "usage", start, Decimal("0.125")))
            rows.append((account, "electricity", device, "power", "gauge", start, Decimal("3")))
    await copy_points(pool, rows)
    async with pool.connection() as conn:
        await conn.execute("VACUUM ANALYZE session_points")
    month = Period(start=JAN, end=FEB, label="2026-01")
    async with pool.connection() as conn:
        points = await usage_points(conn, "acc-a", month)
        plan = str(await (await conn.execute(f"EXPLAIN (FORMAT JSON) {USAGE_POINTS_SQL}",
                                             ("acc-a", month.start, month.end))).fetchone())
    # Only acc-a's usage of January, every one of it, in storage order.
    assert {p.device_id for p in points} == {"acc-a-dev0", "acc-a-dev1"}
    assert {p.product for p in points} == {"energy"}
    assert len(points) == 2 * 31 * 96 and all(JAN <= p.start < FEB for p in points)
    assert [p.point_id for p in points] == sorted(p.point_id for p in points)
    assert sum(p.value for p in points) == Decimal("0.125") * 2 * 31 * 96
    assert "Index Only Scan" in plan and "session_points_account_time" in plan, plan
