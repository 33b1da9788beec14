"""rating_sums (migration 0026) equals a recompute from session_points, and rates as every point (real PostgreSQL)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from tests.storage.analytics_data import add_accounts
from tests.storage.test_rating_support import GRADUATED_DE, TOU_GB_TEXT
from tests.storage.test_rebind import registry_for
from tests.storage.test_sessions_billing import feed, reading, wired
from usagehub.core.billing import BillingRecord
from usagehub.core.calendars import BillingPeriod
from usagehub.core.periods import Period
from usagehub.core.rating import Account, RatedLine, UsageItem, rate
from usagehub.core.tariffs import parse_plans
from usagehub.storage.billing import period_by_label
from usagehub.storage.rating_sums import kept_sums_apply, sub_hour_offset, summed_usage_items
from usagehub.storage.rating_usage import period_records, usage_items, usage_points

ZONES = {"acc-berlin": "Europe/Berlin", "acc-nepal": "Asia/Kathmandu", "acc-newfoundland": "America/St_Johns"}
BASE = datetime(2026, 10, 24, tzinfo=UTC)  # Berlin and St John's leave summer time in the days after
POINT_COLUMNS = "account_id, service, device_id, product, kind, aggregation, start_ts, end_ts, value"
Point = tuple[str, str, str, str, int, int, int]  # account, device, kind, aggregation, start min, span min, value


def hours_of(middle: datetime, zone: str) -> Callable[[datetime], datetime]:
    """Where a point's local hours begin: hours from the epoch shifted by the zone's offset at its midpoint."""
    origin = datetime(1970, 1, 1, tzinfo=UTC) - (middle.astimezone(ZoneInfo(zone)).utcoffset() or timedelta(0))
    return lambda ts: origin + (ts - origin) // timedelta(hours=1) * timedelta(hours=1)


async def recompute(pool: AsyncConnectionPool) -> dict[tuple[object, ...], tuple[Decimal, int, int, int]]:
    """rating_sums as it should be, from every usage point of an account and the account's zone now."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT p.account_id, p.product, p.aggregation, p.start_ts, p.end_ts, p.value, "
                                 "coalesce(a.timezone, 'UTC') FROM session_points p "
                                 "LEFT JOIN accounts a USING (account_id) "
                                 "WHERE p.kind = 'usage' AND p.account_id IS NOT NULL")
        rows = await cur.fetchall()
    sums: defaultdict[tuple[object, ...], list[object]] = defaultdict(lambda: [Decimal(0), 0, 0, 0])
    for account, product, aggregation, start, end, value, zone in rows:
        middle = start + (end - start) / 2
        hour = hours_of(middle, zone)
        key = (account, hour(start), product, hour(middle), hour(end - timedelta(microseconds=1)))
        acc = sums[key]
        acc[0] = acc[0] + value  # type: ignore[operator]
        acc[1] = acc[1] + 1  # type: ignore[operator]
        acc[2] = acc[2] + (value > 0)  # type: ignore[operator]
        acc[3] = acc[3] + (aggregation != "sum" or value < 0)  # type: ignore[operator]
    return {k: (Decimal(v[0]).normalize(), int(v[1]), int(v[2]), int(v[3]))  # type: ignore[arg-type, call-overload]
            for k, v in sums.items()}


async def kept(pool: AsyncConnectionPool) -> dict[tuple[object, ...], tuple[Decimal, int, int, int]]:
    """The rows of rating_sums."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT account_id, start_hour, product, mid_hour, end_hour, quantity, points, "
                                 "used, inexact FROM rating_sums")
        return {tuple(r[:5]): (Decimal(r[5]).normalize(), r[6], r[7], r[8]) for r in await cur.fetchall()}


async def assert_exact(pool: AsyncConnectionPool) -> None:
    """The kept sums equal the recompute, and no row of zero points lingers."""
    assert await kept(pool) == await recompute(pool)


points = st.tuples(st.sampled_from(sorted(ZONES)), st.sampled_from(["d1", "d2"]),
                   st.sampled_from(["usage", "usage", "usage", "gauge"]), st.sampled_from(["sum", "sum", "max"]),
                   st.integers(0, 3 * 24 * 60), st.sampled_from([0, 1, 15, 15, 15, 45, 90, 600]),
                   st.integers(-300, 5000))


async def copy_points(pool: AsyncConnectionPool, batch: list[Point]) -> None:
    """One COPY statement: the triggers fire once for the batch."""
    async with pool.connection() as conn, conn.cursor() as cur, cur.copy(
            f"COPY session_points ({POINT_COLUMNS}) FROM STDIN") as copy:
        for account, device, kind, aggregation, minute, span, value in batch:
            start = BASE + timedelta(minutes=minute)
            await copy.write_row((account, "electricity", device, "energy", kind, aggregation, start,
                                  start + timedelta(minutes=span), Decimal(value) / 1000))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(points, min_size=1, max_size=30), min_size=1, max_size=4),
       move_mod=st.integers(2, 5))
async def test_kept_sums_equal_a_recompute_under_late_data_duplicates_moves_and_zone_changes(
        pool: AsyncConnectionPool, batches: list[list[Point]], move_mod: int) -> None:
    async with pool.connection() as conn:
        await conn.execute("SELECT session_points_delete(array(SELECT point_id FROM session_points))")
        await conn.execute("DELETE FROM accounts")
        await conn.execute("SELECT analytics_rebuild_rollups()")
    await add_accounts(pool, ZONES)
    for batch in batches:  # late data: batches out of time order
        await copy_points(pool, batch)
        await assert_exact(pool)
    await copy_points(pool, batches[0])  # the same points again (a recompute that re-allocates them)
    await assert_exact(pool)
    async with pool.connection() as conn:
        # A device moving account: its points deleted (session_points_delete, as pipeline.rebind does) and
        # written again under the other account.
        await conn.execute(f"CREATE TEMP TABLE moved AS SELECT * FROM session_points WHERE point_id % {move_mod} = 0")
        await conn.execute("SELECT session_points_delete(array(SELECT point_id FROM moved))")
        await conn.execute(f"INSERT INTO session_points ({POINT_COLUMNS}) SELECT 'acc-nepal', service, device_id, "
                           "product, kind, aggregation, start_ts, end_ts, value FROM moved")
        await conn.execute("DROP TABLE moved")
        await assert_exact(pool)
        await conn.execute("UPDATE session_points SET value = -value WHERE point_id % 3 = 1")
        await assert_exact(pool)
        await conn.execute("UPDATE session_points SET account_id = NULL WHERE point_id % 4 = 0")  # unbound
        await assert_exact(pool)
        await conn.execute("UPDATE accounts SET timezone = 'Asia/Kolkata' WHERE account_id = 'acc-berlin'")
        await conn.execute("SELECT analytics_rebuild_rollups()")
        await assert_exact(pool)
        await conn.execute("SELECT session_points_delete(array(SELECT point_id FROM session_points))")
    assert await kept(pool) == {}  # everything subtracted: no row of zero points lingers


def _rated(items: list[UsageItem], plans: str, account: str, zone: str, period: Period) -> list[RatedLine]:
    who = Account(account_id=account, market="DE" if plans == GRADUATED_DE else "GB",
                  currency="EUR" if plans == GRADUATED_DE else "GBP", timezone=zone)
    return rate(items, parse_plans(plans, "p"), who, BillingPeriod(start=period.start, end=period.end))


async def _rates_as_every_point(pool: AsyncConnectionPool, account: str, zone: str, label: str) -> int:
    """Rating the kept sums equals rating every point, daily (graduated) and hourly (time of use): items."""
    used = 0
    period = period_by_label(label, ZoneInfo(zone))
    for plans in (GRADUATED_DE, TOU_GB_TEXT):
        book = parse_plans(plans, "p")
        async with pool.connection() as conn:
            records = await period_records(conn, account, period)
            summed = await summed_usage_items(conn, records, period, timezone=zone, book=book)
            every = usage_items(records, await usage_points(conn, account, period), period)
        assert _rated(summed, plans, account, zone, period) == _rated(every, plans, account, zone, period)
        assert sum(i.quantity for i in summed) == sum(i.quantity for i in every)
        used += len(summed)
    return used


async def test_the_pipeline_keeps_them_exact_through_duplicates_late_data_a_move_and_adjustments(
        pool: AsyncConnectionPool) -> None:
    pipeline, billing = wired(pool)
    reg = registry_for(pool, billing)
    mar = datetime(2026, 3, 1, tzinfo=UTC)
    await reg.upsert_account(account_id="a", timezone="Europe/Berlin")
    await reg.upsert_account(account_id="b", timezone="Asia/Kathmandu")
    await reg.upsert_device(device_id="m1", profile_id="acme-em340")
    await reg.bind(device_id="m1", account_id="a", valid_from=mar - timedelta(days=30))
    stream = [reading("m1", i, mar - timedelta(days=2) + i * timedelta(minutes=47), 130 * i + (i * i) % 90)
              for i in range(1000)]  # to 2 April, over Berlin's change to summer time on 29 March
    late = stream[5::9]
    await feed(pipeline, [m for m in stream[:700] if m not in late])  # type: ignore[arg-type]
    await feed(pipeline, stream[100:160])  # type: ignore[arg-type]  # duplicates
    await assert_exact(pool)
    await billing.mark_billed(tenant="default", record_ids=["a/2026-03/energy"], author="t")
    await feed(pipeline, [*late, *stream[700:]])  # type: ignore[arg-type]  # late data: adjustments
    await assert_exact(pool)
    await reg.bind(device_id="m1", account_id="b", valid_from=mar + timedelta(days=20))  # learned late
    await assert_exact(pool)
    async with pool.connection() as conn:
        kinds = {r[0] for r in await (await conn.execute("SELECT kind FROM billing_records")).fetchall()}
    assert kinds == {"regular", "adjustment"}
    for account, zone in (("a", "Europe/Berlin"), ("b", "Asia/Kathmandu")):
        for label in ("2026-03", "2026-04"):
            await _rates_as_every_point(pool, account, zone, label)


def test_kept_sums_serve_zones_whose_sub_hour_offset_holds_over_the_period() -> None:
    jan = period_by_label("2026-01", ZoneInfo("Asia/Kathmandu"))
    assert sub_hour_offset("Asia/Kathmandu", jan.start, jan.end) == 45 * 60  # UTC+5:45
    march = period_by_label("2026-03", ZoneInfo("Europe/Berlin"))
    assert sub_hour_offset("Europe/Berlin", march.start, march.end) == 0  # across the change to summer time
    assert sub_hour_offset("Asia/Kolkata", jan.start, jan.end) is None  # Kathmandu's midnight is 23:45 there
    april = period_by_label("2026-04", ZoneInfo("Australia/Lord_Howe"))  # +11 to +10:30 on 5 April
    assert sub_hour_offset("Australia/Lord_Howe", april.start, april.end) is None
    assert not kept_sums_apply(60, "Australia/Lord_Howe", april)
    assert kept_sums_apply(1440, "Europe/Berlin", march)


async def test_a_zone_with_a_quarter_hour_offset_reads_kept_sums_and_a_stale_zone_falls_back(
        pool: AsyncConnectionPool) -> None:
    await add_accounts(pool, {"n": "Asia/Kathmandu"})
    period = period_by_label("2026-10", ZoneInfo("Asia/Kathmandu"))
    batch = [("n", f"d{d}", "usage", "sum", m, 15, (m * 7 + d) % 400) for d in (1, 2)
             for m in range(0, 31 * 24 * 60, 15)]
    async with pool.connection() as conn, conn.cursor() as cur, cur.copy(
            f"COPY session_points ({POINT_COLUMNS}) FROM STDIN") as copy:
        for account, device, kind, aggregation, minute, span, value in batch:
            start = period.start + timedelta(minutes=minute)
            if start + timedelta(minutes=span) <= period.end:
                await copy.write_row((account, "electricity", device, "energy", kind, aggregation, start,
                                      start + timedelta(minutes=span), Decimal(value) / 1000))
    total = sum(Decimal(v) / 1000 for *_, m, s, v in batch if period.start + timedelta(minutes=m + s) <= period.end)
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO billing_records (record_id, account_id, product, period_start, period_end, "
                           "period_label, quantity, unit, status, kind, version) VALUES ('n/2026-10/energy', "
                           "'n', 'energy', %s, %s, '2026-10', %s, 'kWh', 'open', 'regular', 1)",
                           (period.start, period.end, total))
    assert kept_sums_apply(60, "Asia/Kathmandu", period)
    assert not kept_sums_apply(90, "Asia/Kathmandu", period)  # a window edge at :30 local: points summed
    items = await _rates_as_every_point(pool, "n", "Asia/Kathmandu", "2026-10")
    assert items == 2 * 31 * 24  # one item per local hour, both plans: kept rows, not 2 x 2976 points
    # The zone moves by half an hour; the rows keep Kathmandu's hours (:15 UTC), which are :45 in Kolkata.
    # Rated by Kolkata's hours they would put 06:45-07:45 in the night window: the keys are checked, and
    # every point is read instead.
    kolkata = period_by_label("2026-10", ZoneInfo("Asia/Kolkata"))
    async with pool.connection() as conn:
        await conn.execute("UPDATE accounts SET timezone = 'Asia/Kolkata'")
        points = await usage_points(conn, "n", kolkata)
        record = BillingRecord(record_id="n/2026-10/energy", account_id="n", period=kolkata, product="energy",
                               quantity=sum((p.value for p in points if p.end <= kolkata.end), Decimal(0)),
                               unit="kWh")
        points = [p for p in points if p.end <= kolkata.end]
        book = parse_plans(TOU_GB_TEXT, "p")
        summed = await summed_usage_items(conn, [record], kolkata, timezone="Asia/Kolkata", book=book)
    every = usage_items([record], points, kolkata)
    assert _rated(summed, TOU_GB_TEXT, "n", "Asia/Kolkata", kolkata) == \
        _rated(every, TOU_GB_TEXT, "n", "Asia/Kolkata", kolkata)
    assert len(summed) == len(points) == 2 * 2976 - 2  # the last point of each meter ends after the period


async def test_later_quarter_hours_update_their_hour_rows_in_place_and_stay_exact(pool: AsyncConnectionPool) -> None:
    """Migration 0038: rating_sums pages keep room, so a batch updating hour rows written earlier is mostly HOT."""
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO accounts (account_id, tenant, timezone) VALUES "
                           "('acc-berlin', 't1', 'Europe/Berlin'), ('acc-utc', 't2', 'UTC')")
    hours = range(1500)  # ~3,000 hour rows: dozens of pages, filled to the fillfactor by the first batch
    await copy_points(pool, [(a, "d1", "usage", "sum", 60 * h, 15, 7)
                             for a in ("acc-berlin", "acc-utc") for h in hours])
    async with pool.connection() as conn, conn.transaction():
        async with conn.cursor() as cur, cur.copy(f"COPY session_points ({POINT_COLUMNS}) FROM STDIN") as copy:
            for account in ("acc-berlin", "acc-utc"):
                for h in hours:
                    start = BASE + timedelta(minutes=60 * h + 15)
                    await copy.write_row((account, "electricity", "d1", "energy", "usage", "sum", start,
                                          start + timedelta(minutes=15), Decimal(5) / 1000))
        row = await (await conn.execute(
            "SELECT pg_stat_get_xact_tuples_updated('rating_sums'::regclass), "
            "pg_stat_get_xact_tuples_hot_updated('rating_sums'::regclass)")).fetchone()
    assert row is not None
    updated, hot = row
    assert updated == 2 * len(hours)  # every hour row was updated, none inserted twice
    assert hot > updated // 4  # with every page full (fillfactor 100) about 1 % were
    await assert_exact(pool)
