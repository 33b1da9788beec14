"""The usage items of an account-month summed in SQL where that is exact, else read point by point.

Rating (``core.rating.rate``) places each usage item by its instant: the segment (a local date range cut
at plan versions and VAT changes), the time-of-use window (local minutes), and a graduated tier by the
running total. Items that fall in the same local time bucket, one that no date or window boundary of the
plan book splits, are therefore rated exactly as their sum at any instant of the bucket, provided that
(as :func:`usage_items` does) the product's points are all ``sum`` aggregations, none negative (a
retraction, or a graduated tier crossed and left again, would otherwise differ from the netted points),
and add up to the record's quantity (a billed record with late points needs the storage-order prefix).
Otherwise the points are read one by one, as before.

An account-month of two 15-minute meters is ~6000 points; summed per hour it is ~750 rows (per day, in
UTC, ~30), so the client no longer builds thousands of Python objects per invoice (bench/storage_size.py:
``billing_summed_*``). Sums are ``numeric`` in PostgreSQL, exact like ``Decimal``.

Where the bucket is whole local hours, the sums are read from ``rating_sums`` (migration 0026), kept per
account, product and local hour by the triggers on ``session_points``: ~720 rows per product-month
instead of every point. Other buckets (a window edge at :30) sum the points as before.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from usagehub.core.billing import BillingRecord, RecordKind
from usagehub.core.periods import Period
from usagehub.core.rating import UsageItem
from usagehub.core.tariffs import PlanBook
from usagehub.storage.pool import Connection
from usagehub.storage.rating_usage import usage_items, usage_points

# Each point placed at its midpoint (rating_usage.when) and summed per product and UTC bucket, in one
# aggregation; an item's instant is its bucket's start. Netting retractions per point key first (as
# rating_usage.net does) would cost a second aggregation: a negative point falls back instead (with none,
# a key nets to zero only when all its points are zero, and ``used`` leaves such buckets out); so does a
# point that ends after the period (rated at its start, not its midpoint). date_add(…, 'UTC') adds elapsed
# time whatever the session's TimeZone (a timestamptz plus '1 day' follows its daylight-saving changes).
# UTC buckets cost less than AT TIME ZONE per row; utc_stride chooses them inside one local bucket each.
USAGE_SUMS_SQL = """
SELECT product, date_bin(%(stride)s, date_add(start_ts, (end_ts - start_ts) / 2, 'UTC'),
                         timestamptz '1970-01-01 00:00:00+00') AS at,
       sum(value) AS quantity, max(value) > 0 AS used,
       bool_and(aggregation = 'sum' AND value >= 0 AND end_ts <= %(end)s) AS exact
FROM session_points
WHERE account_id = %(account)s AND kind = 'usage' AND start_ts >= %(start)s AND start_ts < %(end)s
GROUP BY 1, 2"""

# The same sums from the rows kept per local hour (migration 0026). A row's mid_hour begins a local hour,
# which lies in one local bucket when the bucket is whole hours: with a UTC stride of whole hours (every
# offset in force is whole hours) rows merge per stride bucket, else each row is its own item. A key that
# does not begin a local hour in the account's zone now (the zone changed since) makes the product inexact:
# local hours begin at %(origin)s plus whole hours, the zone's sub-hour offset being constant over the
# period (date_bin is integer arithmetic; AT TIME ZONE per key cost more than the rest of the read).
KEPT_SUMS_SQL = """
SELECT product, CASE WHEN %(merge)s THEN date_bin(%(stride)s, mid_hour, timestamptz '1970-01-01 00:00:00+00')
                     ELSE mid_hour END AS at,
       sum(quantity) AS quantity, sum(used) > 0 AS used,
       bool_and(inexact = 0 AND end_hour < %(end)s AND date_bin('1 hour', mid_hour, %(origin)s) = mid_hour
                AND date_bin('1 hour', start_hour, %(origin)s) = start_hour
                AND date_bin('1 hour', end_hour, %(origin)s) = end_hour) AS exact
FROM rating_sums
WHERE account_id = %(account)s AND start_hour >= %(start)s AND start_hour < %(end)s
GROUP BY 1, 2"""
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def bucket_minutes(book: PlanBook) -> int:
    """The widest local bucket (minutes, dividing a day) that no time-of-use window boundary splits."""
    minutes = [1440]
    for plan in book.plans:
        for version in plan.versions:
            price = version.usage_price
            if price is not None and price.type == "tou":
                minutes += [m for w in price.windows for m in (w.start_minute, w.end_minute)]
    return math.gcd(*minutes)


@lru_cache(maxsize=256)
def utc_stride(timezone: str, start: datetime, end: datetime, minutes: int) -> timedelta:
    """The widest bucket (from the UNIX epoch) that lies in one local ``minutes`` bucket from start to end.

    A local bucket edge is a UTC instant ≡ -offset (mod ``minutes``), so a stride dividing both the
    bucket and every UTC offset in force, and landing on every offset change, never straddles one.
    """
    tz = ZoneInfo(timezone)

    def offset(epoch: int) -> int:
        delta = datetime.fromtimestamp(epoch, UTC).astimezone(tz).utcoffset()
        return int(delta.total_seconds()) if delta else 0

    first, last = int(start.timestamp()), int(end.timestamp())
    stride = math.gcd(minutes * 60, offset(first))
    for lo in range(first, last, 3600):
        hi = min(lo + 3600, last)
        if offset(hi) != offset(lo):  # an offset change in (lo, hi]: find its second
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if offset(mid) == offset(lo) else (lo, mid)
            stride = math.gcd(stride, offset(hi), hi)
    return timedelta(seconds=stride)


def kept_sums_apply(minutes: int, timezone: str, period: Period) -> bool:
    """Whether the per-local-hour sums of ``rating_sums`` serve a bucket of ``minutes`` over ``period``."""
    return _kept_offset(minutes, timezone, period) is not None


def _kept_offset(minutes: int, timezone: str, period: Period) -> int | None:
    """The zone's sub-hour offset when the kept sums serve the bucket, else None."""
    return sub_hour_offset(timezone, period.start, period.end) if minutes % 60 == 0 else None


@lru_cache(maxsize=256)
def sub_hour_offset(timezone: str, start: datetime, end: datetime) -> int | None:
    """The zone's UTC offset modulo an hour (seconds) if the same over [start, end] and both are local hours."""
    tz = ZoneInfo(timezone)
    seen = set()
    for epoch in [*range(int(start.timestamp()), int(end.timestamp()), 1800), int(end.timestamp())]:
        delta = datetime.fromtimestamp(epoch, UTC).astimezone(tz).utcoffset()
        seen.add(int(delta.total_seconds()) % 3600 if delta else 0)
    on_hour = all((int(at.timestamp()) + next(iter(seen))) % 3600 == 0 for at in (start, end))
    return next(iter(seen)) if len(seen) == 1 and on_hour else None


def sums_query(account_id: str, period: Period, timezone: str, minutes: int) -> tuple[str, dict[str, Any]]:
    """The summed read of an account-month and its parameters: the kept sums where they apply, else the points."""
    stride = utc_stride(timezone, period.start, period.end, minutes)
    args = {"account": account_id, "start": period.start, "end": period.end, "stride": stride,
            "merge": stride % HOUR == timedelta(0)}
    offset = _kept_offset(minutes, timezone, period)
    if offset is None:
        return USAGE_SUMS_SQL, args
    # local hours begin where UTC time plus the sub-hour offset is a whole hour
    return KEPT_SUMS_SQL, args | {"origin": EPOCH - timedelta(seconds=offset)}


async def summed_usage_items(conn: Connection, records: Sequence[BillingRecord], period: Period, *,
                             timezone: str, book: PlanBook) -> list[UsageItem]:
    """The usage items of a period's regular records; equal in rating to :func:`usage_items` on every point."""
    regular = [r for r in records if r.kind is RecordKind.REGULAR]
    if not regular:
        return []
    account_id = regular[0].account_id
    cur = await conn.execute(*sums_query(account_id, period, timezone, bucket_minutes(book)))
    rows: list[Any] = await cur.fetchall()
    buckets: defaultdict[str, list[Any]] = defaultdict(list)
    exact: dict[str, bool] = {}
    for product, at, quantity, used, summed in rows:
        exact[product] = exact.get(product, True) and bool(summed)
        if used:
            buckets[product].append((at, quantity))
    items: list[UsageItem] = []
    for record in regular:
        own = buckets.get(record.product, [])
        total = sum((q for _, q in own), Decimal(0))
        if not exact.get(record.product, True) or total != record.quantity:
            return usage_items(records, await usage_points(conn, account_id, period), period)
        items += [UsageItem(account_id=record.account_id, product=record.product, ts=at.astimezone(UTC),
                            quantity=q, unit=record.unit, record_id=record.record_id) for at, q in own]
    return items
