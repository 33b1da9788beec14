"""An invoice's adjustment lines from the kept sums equal those from every point (real PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from tests.storage.test_rating_support import GRADUATED_DE, TOU_GB_TEXT, account_with_meter, feed_readings, wired
from usagehub.core.billing import RecordKind
from usagehub.core.periods import Period
from usagehub.core.rating import Account, RatedLine
from usagehub.core.tariffs import parse_plans
from usagehub.core.vat import VatTable, parse_vat_table
from usagehub.errors import DomainError
from usagehub.storage.billing import period_by_label
from usagehub.storage.rating_adjust import adjustment_lines, kept_adjustment_items
from usagehub.storage.rating_catalog import shipped_vat_text
from usagehub.storage.rating_usage import adjusted_periods, period_records, point_adjustment_lines

VAT = parse_vat_table(shipped_vat_text(), "v")
BOOKS = {"DE": (GRADUATED_DE, "EUR"), "GB": (TOU_GB_TEXT, "GBP")}  # a daily bucket; an hourly one (time of use)


async def both_ways(pool: AsyncConnectionPool, account: Account, label: str,
                    vat: VatTable = VAT) -> tuple[list[RatedLine], list[RatedLine], int]:
    """(lines from kept sums, lines from every point, adjusted periods the kept sums served) of an invoice."""
    period = period_by_label(label, ZoneInfo(account.timezone))
    book = parse_plans(BOOKS[account.market][0], "p")
    async with pool.connection() as conn:
        adjustments = [r for r in await period_records(conn, account.account_id, period)
                       if r.kind is RecordKind.ADJUSTMENT]
        kept = await adjustment_lines(conn, account, period, adjustments, book, vat)
        every = await point_adjustment_lines(conn, account, period, adjustments, book, vat)
        served = 0
        for original, pairs in await adjusted_periods(conn, period, adjustments):
            served += await kept_adjustment_items(conn, account, original, pairs, book) is not None
    return kept, every, served


def local(zone: str, *args: int) -> datetime:
    """A local wall time as a UTC instant."""
    return datetime(*args, tzinfo=ZoneInfo(zone)).astimezone(UTC)  # type: ignore[arg-type,misc]


def hourly(zone: str, first: datetime, hours: int, wh: int, step: int) -> list[tuple[datetime, int]]:
    """Register readings every 47 minutes from ``first`` (local), growing by 130..219 Wh."""
    out, start = [], local(zone, first.year, first.month, first.day, first.hour)
    for i in range(hours * 60 // 47):
        wh += 130 + (i * step) % 90
        out.append((start + i * timedelta(minutes=47), wh))
    return out


@pytest.mark.parametrize(("market", "zone"), [("DE", "Europe/Berlin"), ("GB", "Asia/Kathmandu")])
async def test_late_data_after_a_bill_in_two_tenants_adjusts_alike_from_kept_sums_and_points(
        pool: AsyncConnectionPool, market: str, zone: str) -> None:
    pipeline, billing, rating = wired(pool)
    plans, currency = BOOKS[market]
    accounts = {"t1": Account(account_id="x1", market=market, currency=currency, timezone=zone),
                "t2": Account(account_id="x2", market=market, currency=currency, timezone=zone)}
    for tenant, account in accounts.items():
        await account_with_meter(pool, account.account_id, f"m-{tenant}", market=market, currency=currency,
                                 timezone=zone, tenant=tenant)
    await rating.start()
    for tenant in accounts:
        await rating.load_plans(plans, "plans.yaml", tenant=tenant)
    october = {t: hourly(zone, datetime(2026, 10, 1), 30 * 24, 1000 * n, 7 * n) for n, t in enumerate(accounts, 1)}
    stops = {"t1": 15, "t2": 24}  # the meters stop reporting: t1 before its 100th kWh (a tier edge), t2 after
    for tenant, readings in october.items():
        stop = local(zone, 2026, 10, stops[tenant])
        await feed_readings(pipeline, f"m-{tenant}", [r for r in readings if r[0] < stop])
    for tenant, account in accounts.items():
        await billing.mark_billed(tenant=tenant, record_ids=[f"{account.account_id}/2026-10/energy"], author="t")
    for tenant, readings in october.items():  # their buffers arrive after the bill: late data at the month's end
        await feed_readings(pipeline, f"m-{tenant}", readings, first_seq=0)

    totals = {}
    for tenant, account in accounts.items():
        kept, every, served = await both_ways(pool, account, "2026-11")
        assert kept == every
        assert served == 1  # the late period was read from the kept sums, not from every point
        assert kept and all(line.adjusts is not None for line in kept)
        assert {r for line in kept for r in line.record_ids} == {f"{account.account_id}/2026-10/energy/adj/2026-11"}
        stored = await rating.invoice_preview(account.account_id, "2026-11", tenant=tenant)
        assert [line.rated for line in stored.preview.adjustments] == kept
        totals[tenant] = sum(line.quantity for line in kept if line.component != "standing_charge")
        with pytest.raises(DomainError):  # the other tenant's caller does not see this account's invoice
            await rating.invoice_preview(account.account_id, "2026-11", tenant="t2" if tenant == "t1" else "t1")
    assert totals["t1"] != totals["t2"]  # each account is adjusted by its own late usage (t1 lost 9 more days)

    # A reading late in the middle splits a billed interval: its retraction (a negative point) is not summed,
    # so the period is read point by point, with the same lines.
    middle = local(zone, 2026, 10, 5, 10)
    for tenant in accounts:
        before = max(wh for ts, wh in october[tenant] if ts < middle)
        await feed_readings(pipeline, f"m-{tenant}", [(middle, before + 1)], first_seq=5000)
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM session_points WHERE value < 0")
        assert (await cur.fetchone() or [0])[0] > 0
    for account in accounts.values():
        kept, every, served = await both_ways(pool, account, "2026-11")
        assert kept == every
        assert served == 0


SPAN = 31 * 24 * 60  # minutes of October in Berlin (the hour added on 25 October included)
# Starts anywhere in the month, or within its first three hours: points sharing a kept bucket, billed and late
# ones among them, whose order inside the bucket decides which crosses a graduated tier.
point = st.tuples(st.sampled_from(["d1", "d2"]), st.one_of(st.integers(0, SPAN - 120), st.integers(0, 180)),
                  st.sampled_from([15, 15, 47, 60, 90]), st.integers(0, 2500))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(points=st.lists(point, min_size=1, max_size=40), cuts=st.tuples(st.floats(0, 1), st.floats(0, 1)),
       negative=st.sampled_from([False, False, False, True]))
@example(points=[("d1", 0, 15, 0)], cuts=(0.0, 0.0), negative=True)  # CI: a zero point "retracted" stays kept
@example(points=[("d1", 0, 47, 361), ("d1", 0, 15, 640)], cuts=(0.5, 1.0), negative=False)  # CI: one start
async def test_kept_adjustments_equal_the_point_read_for_any_prefix(
        pool: AsyncConnectionPool, points: list[tuple[str, int, int, int]], cuts: tuple[float, float],
        negative: bool) -> None:
    """Billed = the first points in storage order, adjusted = some after them, more after that (not yet billed)."""
    async with pool.connection() as conn:
        # session_points_delete keeps the rollups exact (TimescaleDB refuses any other DELETE of points)
        await conn.execute("SELECT session_points_delete(array(SELECT point_id FROM session_points))")
        for table in ("billing_records", "accounts"):
            await conn.execute(f"DELETE FROM {table}")
        await conn.execute("INSERT INTO accounts (account_id, name, market, timezone) VALUES "
                           "('h', 'h', 'DE', 'Europe/Berlin')")
        october = period_by_label("2026-10", ZoneInfo("Europe/Berlin"))
        values = [Decimal(v) / 10 for *_, v in points]
        if negative:
            values[-1] = -values[-1]  # a retraction: the kept sums do not apply, the points are read
        for (device, minute, span, _), value in zip(points, values, strict=True):  # one statement each
            start = october.start + timedelta(minutes=minute)
            await conn.execute("INSERT INTO session_points (account_id, service, device_id, product, kind, "
                               "aggregation, start_ts, end_ts, value) VALUES ('h', 'electricity', %s, 'energy', "
                               "'usage', 'sum', %s, %s, %s)", (device, start, start + timedelta(minutes=span), value))
        first = round(cuts[0] * len(values))
        second = first + round(cuts[1] * (len(values) - first))
        billed, late = sum(values[:first], Decimal(0)), sum(values[first:second], Decimal(0))
        for record, quantity, kind, adjusts, start in (
                ("h/2026-10/energy", billed, "regular", None, october),
                ("h/2026-10/energy/adj/2026-11", late, "adjustment", "h/2026-10/energy",
                 Period(start=october.end, end=october.end + timedelta(days=30), label="2026-11"))):
            await conn.execute("INSERT INTO billing_records (record_id, account_id, period_start, period_end, "
                               "period_label, product, quantity, unit, status, kind, adjusts, version) VALUES "
                               "(%s, 'h', %s, %s, %s, 'energy', %s, 'kWh', 'billed', %s, %s, 1)",
                               (record, start.start, start.end, start.label, quantity, kind, adjusts))
    for market, (_, currency) in BOOKS.items():  # graduated tiers by the running total; time-of-use windows
        account = Account(account_id="h", market=market, currency=currency, timezone="Europe/Berlin")
        kept, every, served = await both_ways(pool, account, "2026-11")
        assert kept == every
        assert served == (0 if values[-1] < 0 else 1)  # a "retraction" of a zero point leaves none negative
