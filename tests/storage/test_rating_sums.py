"""Usage items summed in SQL per local bucket rate exactly as the point-by-point items (storage.rating_sums)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from psycopg_pool import AsyncConnectionPool

from tests.storage.analytics_data import add_accounts
from tests.storage.test_rating_support import GRADUATED_DE, TOU_GB_TEXT
from usagehub.core.billing import BillingRecord
from usagehub.core.calendars import BillingPeriod
from usagehub.core.periods import Period
from usagehub.core.rating import Account, RatedLine, UsageItem, rate
from usagehub.core.tariffs import PlanBook, parse_plans
from usagehub.storage.rating_sums import bucket_minutes, summed_usage_items, utc_stride
from usagehub.storage.rating_usage import usage_items, usage_points

LONDON = "Europe/London"
# October 2026 in London: summer time ends on the 25th (a 25-hour local day).
OCTOBER = Period(start=datetime(2026, 9, 30, 23, tzinfo=UTC), end=datetime(2026, 11, 1, tzinfo=UTC), label="2026-10")
# A window boundary at 07:30: buckets of 90 local minutes.
TOU_HALF_HOURS = TOU_GB_TEXT.replace('end: "07:00"', 'end: "07:30"').replace('start: "07:00"', 'start: "07:30"')


async def _points(pool: AsyncConnectionPool, account: str, *, seed: int, retraction: bool = False,
                  negative: bool = False, straddle: bool = False) -> Decimal:
    """Two devices' 15-minute points off the local quarter-hour grid (some zero); their total."""
    rng = random.Random(seed)
    rows, total = [], Decimal(0)
    for device in ("m1", "m2"):
        start = OCTOBER.start + timedelta(minutes=rng.randrange(15))  # not on the local quarter-hour grid
        while start + timedelta(minutes=15) <= OCTOBER.end:
            value = Decimal(rng.randrange(-100, 400)).max(Decimal(0)) / 1000
            rows.append((device, start, start + timedelta(minutes=15), value))
            total += value
            start += timedelta(minutes=15)
    if retraction:  # an entry and its retraction
        rows += [(*rows[100][:3], Decimal("0.5")), (*rows[100][:3], Decimal("-0.5"))]
    if straddle:  # rated at its start: its midpoint is in November
        rows.append(("m2", OCTOBER.end - timedelta(minutes=1), OCTOBER.end + timedelta(minutes=9), Decimal("0.2")))
        total += Decimal("0.2")
    if negative:
        rows.append(("m1", rows[7][1], rows[7][2] + timedelta(minutes=1), Decimal("-0.002")))
        total -= Decimal("0.002")
    async with pool.connection() as conn, conn.cursor() as cur, cur.copy(
            "COPY session_points (account_id, service, device_id, product, kind, aggregation, start_ts, end_ts, "
            "value) FROM STDIN") as copy:
        for device, start, end, value in rows:
            await copy.write_row((account, "electricity", device, "energy", "usage", "sum", start, end, value))
    return total


def _record(account: str, quantity: Decimal) -> BillingRecord:
    return BillingRecord(record_id=f"{account}/2026-10/energy", account_id=account, period=OCTOBER,
                         product="energy", quantity=quantity, unit="kWh")


def _rated(items: list[UsageItem], book: PlanBook, account: str, market: str, currency: str) -> list[RatedLine]:
    who = Account(account_id=account, market=market, currency=currency, timezone=LONDON)
    return rate(items, book, who, BillingPeriod(start=OCTOBER.start, end=OCTOBER.end))


def test_bucket_is_the_widest_that_no_window_boundary_splits() -> None:
    assert bucket_minutes(parse_plans(GRADUATED_DE, "p")) == 1440
    assert bucket_minutes(parse_plans(TOU_GB_TEXT, "p")) == 60
    assert bucket_minutes(parse_plans(TOU_HALF_HOURS, "p")) == 90  # 07:30 is the fifth 90-minute bucket


def test_utc_buckets_lie_in_one_local_bucket_across_offsets_and_their_changes() -> None:
    jan = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
    assert utc_stride("UTC", *jan, 1440) == timedelta(days=1)
    assert utc_stride("Europe/Berlin", *jan, 1440) == timedelta(hours=1)
    assert utc_stride("Asia/Kathmandu", *jan, 60) == timedelta(minutes=15)  # UTC+5:45
    assert utc_stride("Asia/Kolkata", *jan, 1440) == timedelta(minutes=30)
    # Lord Howe Island moves by half an hour (UTC+11 to +10:30) on 5 April 2026 at 15:00 UTC.
    april = (datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC))
    assert utc_stride("Australia/Lord_Howe", *april, 1440) == timedelta(minutes=30)
    assert utc_stride("Europe/London", OCTOBER.start, OCTOBER.end, 90) == timedelta(minutes=30)


async def test_summed_items_rate_as_every_point_with_windows_tiers_and_dst(pool: AsyncConnectionPool) -> None:
    await add_accounts(pool, {"a1": LONDON, "a2": LONDON})
    for account, (plans, market, currency) in {"a1": (TOU_HALF_HOURS, "GB", "GBP"),
                                               "a2": (GRADUATED_DE, "DE", "EUR")}.items():
        total = await _points(pool, account, seed=len(account) + ord(account[-1]))
        book = parse_plans(plans, "p")
        records = [_record(account, total)]
        async with pool.connection() as conn:
            points = await usage_points(conn, account, OCTOBER)
            summed = await summed_usage_items(conn, records, OCTOBER, timezone=LONDON, book=book)
        per_point = usage_items(records, points, OCTOBER)
        assert len(summed) <= len(per_point) // 3, (len(summed), len(per_point))  # the SQL sums were used
        assert sum(i.quantity for i in summed) == sum(i.quantity for i in per_point) == total
        lines = _rated(summed, book, account, market, currency)
        assert lines == _rated(per_point, book, account, market, currency)
        assert len({ln.detail for ln in lines}) >= 2  # several windows / tiers were reached


async def test_what_sums_cannot_rate_exactly_is_read_point_by_point(pool: AsyncConnectionPool) -> None:
    await add_accounts(pool, {"a1": LONDON, "a2": LONDON})
    book = parse_plans(TOU_HALF_HOURS, "p")
    await add_accounts(pool, {"a3": LONDON, "a4": LONDON})
    total = await _points(pool, "a1", seed=3)
    total_neg = await _points(pool, "a2", seed=4, negative=True)
    total_retracted = await _points(pool, "a3", seed=5, retraction=True)
    total_straddling = await _points(pool, "a4", seed=6, straddle=True)
    # A billed record that late points outgrew (the storage-order prefix decides), a negative point, a retraction.
    for account, records in (("a1", [_record("a1", total - Decimal("0.001"))]),
                             ("a1", [_record("a1", total - Decimal("0.5"))]),
                             ("a2", [_record("a2", total_neg)]),
                             ("a3", [_record("a3", total_retracted)]),
                             ("a4", [_record("a4", total_straddling)])):
        async with pool.connection() as conn:
            points = await usage_points(conn, account, OCTOBER)
            summed = await summed_usage_items(conn, records, OCTOBER, timezone=LONDON, book=book)
        assert summed == usage_items(records, points, OCTOBER)
