"""Rollups stay equal to a recompute from session_points under inserts, deletes and updates (real PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from tests.storage.analytics_data import Row, add_accounts, copy_points
from usagehub.core.analytics.buckets import Bucket, bucket_label
from usagehub.storage.rollups import Scope, series

ZONES = {"acc-berlin": "Europe/Berlin", "acc-nepal": "Asia/Kathmandu", "acc-newfoundland": "America/St_Johns"}
BASE = datetime(2026, 10, 24, tzinfo=UTC)  # Berlin leaves summer time on 2026-10-25

RECOMPUTE_DAILY = """
SELECT s.account_id, (s.start_ts AT TIME ZONE a.timezone)::date, s.product, s.service,
       sum(value) FILTER (WHERE kind = 'usage'), count(*) FILTER (WHERE kind = 'usage'),
       count(*) FILTER (WHERE kind <> 'usage')
FROM session_points s JOIN accounts a USING (account_id) GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"""


RECOMPUTE_FLEET = """
SELECT a.tenant, a.market, r.day, r.product, r.service, sum(r.quantity), sum(r.usage_count), sum(r.activity_count),
       count(*)
FROM rollup_daily r JOIN accounts a USING (account_id) GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5"""


def _norm(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    return [(*r[:4], Decimal(r[4] or 0).normalize(), r[5], r[6]) for r in rows]  # type: ignore[arg-type]


async def _assert_exact(pool: AsyncConnectionPool) -> None:
    async with pool.connection() as conn:
        want_d = _norm(await (await conn.execute(RECOMPUTE_DAILY)).fetchall())
        got_d = _norm(await (await conn.execute(
            "SELECT account_id, day, product, service, quantity, usage_count, activity_count "
            "FROM rollup_daily ORDER BY 1, 2, 3, 4")).fetchall())
        want_f = await (await conn.execute(RECOMPUTE_FLEET)).fetchall()
        got_f = await (await conn.execute(
            "SELECT tenant, market, day, product, service, quantity, usage_count, activity_count, accounts "
            "FROM rollup_fleet_daily WHERE accounts <> 0 OR usage_count <> 0 OR activity_count <> 0 "
            "ORDER BY 1, 2, 3, 4, 5")).fetchall()
    assert got_d == want_d
    assert [(*r[:5], Decimal(r[5]).normalize(), *r[6:]) for r in got_f] == \
        [(*r[:5], Decimal(r[5]).normalize(), *r[6:]) for r in want_f]


points = st.builds(
    lambda acc, dev, prod, kind, minutes, value: (
        acc, "security" if prod == "alarms" else "electricity", dev, prod, kind,
        BASE + timedelta(minutes=minutes), Decimal(value) / 1000),
    st.sampled_from([*sorted(ZONES), None]), st.sampled_from(["d1", "d2"]), st.sampled_from(["energy", "alarms"]),
    st.sampled_from(["usage", "usage", "gauge", "state"]), st.integers(0, 3 * 24 * 60),
    st.integers(-500, 100_000))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(points, min_size=1, max_size=25), min_size=1, max_size=4),
       delete_mod=st.integers(2, 5))
async def test_rollups_equal_recompute_under_late_data_and_deletes(pool: AsyncConnectionPool,
                                                                    batches: list[list[Row]],
                                                                    delete_mod: int) -> None:
    async with pool.connection() as conn:
        if not (await (await conn.execute("SELECT count(*) FROM accounts")).fetchone())[0]:  # type: ignore[index]
            await add_accounts(pool, ZONES)
    for batch in batches:  # late data: batches out of time order, each one COPY statement
        await copy_points(pool, batch)
        await _assert_exact(pool)
    async with pool.connection() as conn:
        # A recompute (rebinding) deletes some points and re-inserts them under another account.
        # session_points_delete: the one way to delete points on both storages (migration 0014).
        await conn.execute(f"CREATE TEMP TABLE moved AS SELECT * FROM session_points WHERE point_id % {delete_mod} = 0")
        await conn.execute("SELECT session_points_delete(array(SELECT point_id FROM moved))")
        await conn.execute("INSERT INTO session_points (account_id, service, device_id, product, kind, "
                           "aggregation, start_ts, end_ts, value) SELECT 'acc-nepal', service, device_id, product, "
                           "kind, aggregation, start_ts, end_ts, value FROM moved")
        await conn.execute("DROP TABLE moved")
        await _assert_exact(pool)
        await conn.execute("UPDATE session_points SET value = value * 2 WHERE point_id % 3 = 1")
        await _assert_exact(pool)
        # Unbound points (account NULL) are not counted until a binding gives them an account.
        await conn.execute("UPDATE session_points SET account_id = NULL WHERE point_id % 4 = 0")
        await _assert_exact(pool)
        await conn.execute("UPDATE session_points SET account_id = 'acc-berlin' WHERE account_id IS NULL")
        await _assert_exact(pool)
        await conn.execute("SELECT session_points_delete(array(SELECT point_id FROM session_points))")
        left = await (await conn.execute("SELECT (SELECT count(*) FROM rollup_daily) + "
                                         "(SELECT count(*) FROM rating_sums)")).fetchone()
    assert left == (0,)  # everything subtracted away: no zero rows linger


async def test_rebuild_after_zone_change(pool: AsyncConnectionPool) -> None:
    await add_accounts(pool, {"acc": "UTC"})
    await copy_points(pool, [("acc", "electricity", "d", "energy", "usage", datetime(2026, 3, 1, 23, 30, tzinfo=UTC),
                              Decimal(2))])
    async with pool.connection() as conn:
        await conn.execute("UPDATE accounts SET timezone = 'Europe/Berlin'")
        await conn.execute("SELECT analytics_rebuild_rollups()")
        day = await (await conn.execute("SELECT day FROM rollup_daily")).fetchone()
    assert day == (date(2026, 3, 2),)  # 23:30 UTC is 00:30 the next local day in Berlin


async def test_series_buckets_follow_each_accounts_zone(pool: AsyncConnectionPool) -> None:
    await add_accounts(pool, ZONES)
    rows: list[Row] = []
    for i in range(0, 3 * 24 * 4):  # every 15 minutes over the DST change, both accounts
        ts = BASE + timedelta(minutes=15 * i)
        for account in ("acc-berlin", "acc-nepal"):
            rows.append((account, "electricity", "d1", "energy", "usage", ts, Decimal(i % 7) + Decimal("0.125")))
    await copy_points(pool, rows)
    since, until = date(2026, 10, 24), date(2026, 10, 27)
    for bucket in (Bucket.HOUR, Bucket.DAY, Bucket.QUARTER):
        want: dict[datetime, Decimal] = {}
        for account, _, _, _, _, ts, value in rows:
            label = bucket_label(ts, ZoneInfo(ZONES[account]), bucket)
            if since <= label.date() < until:
                want[label] = want.get(label, Decimal(0)) + value
        async with pool.connection() as conn:
            got = await series(conn, tenant="default", scope=Scope.FLEET, key=None, product="energy",
                               bucket=bucket, since=since, until=until)
        assert {p.label: p.quantity for p in got} == want, bucket
    async with pool.connection() as conn:
        days = await series(conn, tenant="default", scope=Scope.ACCOUNT, key="acc-berlin", product=None,
                            bucket=Bucket.HOUR, since=date(2026, 10, 25), until=date(2026, 10, 26))
    # 25 October 2026 has 25 hours in Berlin; the repeated 02:00 hour is one label holding both.
    assert len(days) == 24
    assert sum(p.quantity for p in days) == sum(v for a, *_, ts, v in rows if a == "acc-berlin"
                                                 and ts.astimezone(ZoneInfo("Europe/Berlin")).date()
                                                 == date(2026, 10, 25))


async def test_two_writers_of_one_day_do_not_wait_for_each_other(database_url: str, pool: AsyncConnectionPool) -> None:
    """The fleet's day row is kept in slots (migration 0046): a lane never waits for another lane's COMMIT."""
    await add_accounts(pool, ZONES)
    conns = [await psycopg.AsyncConnection.connect(database_url) for _ in range(2)]
    try:
        # Two connections in different slots (the backend pid modulo 64); a third if the first two share one.
        async def slot(c: psycopg.AsyncConnection[Any]) -> int:
            return int((await (await c.execute("SELECT pg_backend_pid() % 64")).fetchone())[0])  # type: ignore[index]

        while await slot(conns[0]) == await slot(conns[-1]):
            conns.append(await psycopg.AsyncConnection.connect(database_url))
        first, second = conns[0], conns[-1]
        noon = BASE + timedelta(hours=12)  # the same local day (24 October) in Berlin and Kathmandu
        insert = ("INSERT INTO session_points (account_id, service, device_id, product, kind, aggregation, "
                  "start_ts, end_ts, value) VALUES (%s, 'electricity', %s, 'energy', 'usage', 'sum', %s, %s, %s)")
        # An unbound point first (no rollup): on TimescaleDB it makes the chunk, which a transaction that makes it
        # holds until it commits (a weekly wait, not this one).
        await first.execute(insert, (None, "d0", noon, noon, Decimal(7)))
        await first.commit()
        await first.execute(insert, ("acc-berlin", "d1", noon, noon, Decimal("1.5")))  # not committed yet
        await second.execute("SET lock_timeout = '3s'")  # before 0046 it waited here for the first's COMMIT
        await second.execute(insert, ("acc-nepal", "d2", noon, noon, Decimal("2.25")))
        await second.commit()
        await first.commit()
    finally:
        for c in conns:
            await c.close()
    await _assert_exact(pool)
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT count(*), sum(quantity) FROM rollup_fleet_slots")).fetchone()
        fleet = await (await conn.execute("SELECT quantity, accounts FROM rollup_fleet_daily")).fetchall()
    assert row == (2, Decimal("3.75")) and fleet == [(Decimal("3.75"), 2)]


async def test_points_without_an_account_build_no_rollup_statement(pool: AsyncConnectionPool) -> None:
    """Migration 0051: a batch of unbound points leaves the trigger at once; one bound point rolls the batch up."""
    await add_accounts(pool, ZONES)
    noon = BASE + timedelta(hours=12)
    unbound = [(None, "electricity", f"d{i}", "energy", "usage", noon + timedelta(minutes=i), Decimal(i))
               for i in range(5)]
    async with pool.connection() as conn, conn.transaction(force_rollback=True):
        # The trigger's statements come from analytics_rollup_sql (inlined SQL): a wrapper counts its calls.
        await conn.execute("ALTER FUNCTION analytics_rollup_sql(text) RENAME TO analytics_rollup_sql_counted")
        await conn.execute("CREATE TEMP TABLE rollup_calls (source text)")
        await conn.execute(
            "CREATE FUNCTION analytics_rollup_sql(source text) RETURNS TABLE (tbl text, stmt text) LANGUAGE plpgsql "
            "AS $$ BEGIN INSERT INTO rollup_calls VALUES (source); "
            "RETURN QUERY SELECT * FROM analytics_rollup_sql_counted(source); END $$")

        async def calls() -> int:
            return int((await (await conn.execute("SELECT count(*) FROM rollup_calls")).fetchone())[0])  # type: ignore[index]

        await _copy_rows(conn, unbound)
        assert await calls() == 0  # before 0051: built and ran its statements for nothing
        await _copy_rows(conn, [*unbound[:2], ("acc-berlin", "electricity", "d9", "energy", "usage", noon,
                                               Decimal("2.5"))])
        assert await calls() == 1
        await conn.execute("UPDATE session_points SET value = value + 1 WHERE account_id IS NULL")
        assert await calls() == 1  # an update of unbound points only
        await conn.execute("UPDATE session_points SET account_id = 'acc-nepal' WHERE device_id = 'd3'")
        assert await calls() == 2  # a point that gains an account counts
        rows = await (await conn.execute("SELECT account_id, quantity FROM rollup_daily ORDER BY 1")).fetchall()
        assert rows == [("acc-berlin", Decimal("2.5")), ("acc-nepal", Decimal(4))]


async def _copy_rows(conn: psycopg.AsyncConnection[Any], rows: list[tuple[Any, ...]]) -> None:
    async with conn.cursor() as cur, cur.copy(
            "COPY session_points (account_id, service, device_id, product, kind, aggregation, start_ts, end_ts, "
            "value) FROM STDIN") as copy:
        for account, service, device, product, kind, start, value in rows:
            await copy.write_row((account, service, device, product, kind, "sum", start, start, value))
