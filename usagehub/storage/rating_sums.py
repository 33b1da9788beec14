"""The usage items of an account-month summed in SQL where that is exact, else read point by point.

Rating (``core.rating.rate``) places each usage item by its instant: the segment (a local date range cut
at plan versions and VAT changes), the time-of-use window (local minutes), and a graduated tier by the
running total. Items that fall in the same local time bucket, one that no date or window boundary of the
plan book splits, are therefore rated exactly as their sum at any instant of the bucket, provided that
(as :func:`usage_items` does) the product's points are all ``sum`` aggregations, net of retractions,
all positive (a graduated tier crossed and left again would otherwise leave a zero line), and add up to
the record's quantity (a billed record with late points needs the storage-order prefix: read per point).

An account-month of 15-minute points is ~6000 rows; summed per local hour it is ~750, per local day
(no time-of-use plan) ~30, so the client no longer builds thousands of Python objects per invoice.
Sums are ``numeric`` in PostgreSQL, exact like ``Decimal``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, timedelta
from decimal import Decimal
from typing import Any

from usagehub.core.billing import BillingRecord, RecordKind
from usagehub.core.periods import Period
from usagehub.core.rating import UsageItem
from usagehub.core.tariffs import PlanBook
from usagehub.storage.pool import Connection
from usagehub.storage.rating_usage import usage_items, usage_points

# Net per point key as storage.rating_usage.net does, place at the midpoint (rating_usage.when), then sum
# per product and local bucket. A bucket whose points all net to zero comes back with n = 0.
USAGE_SUMS_SQL = """
SELECT product, count(*) FILTER (WHERE value <> 0) AS n, min(at) FILTER (WHERE value <> 0) AS at,
       coalesce(sum(value), 0) AS quantity, bool_and(summed) AS summed,
       coalesce(bool_and(value > 0) FILTER (WHERE value <> 0), true) AS positive
FROM (SELECT product, sum(value) AS value, bool_and(aggregation = 'sum') AS summed,
             CASE WHEN start_ts + (end_ts - start_ts) / 2 >= %(start)s AND start_ts + (end_ts - start_ts) / 2 < %(end)s
                  THEN start_ts + (end_ts - start_ts) / 2 ELSE start_ts END AS at
      FROM session_points
      WHERE account_id = %(account)s AND kind = 'usage' AND start_ts >= %(start)s AND start_ts < %(end)s
      GROUP BY device_id, product, start_ts, end_ts, label) p
GROUP BY product, date_bin(%(stride)s, at AT TIME ZONE %(zone)s, timestamp '2000-01-01')
ORDER BY product, at"""


def bucket_minutes(book: PlanBook) -> int:
    """The widest local bucket (minutes, dividing a day) that no time-of-use window boundary splits."""
    minutes = [1440]
    for plan in book.plans:
        for version in plan.versions:
            price = version.usage_price
            if price is not None and price.type == "tou":
                minutes += [m for w in price.windows for m in (w.start_minute, w.end_minute)]
    return math.gcd(*minutes)


async def summed_usage_items(conn: Connection, records: Sequence[BillingRecord], period: Period, *,
                             timezone: str, book: PlanBook) -> list[UsageItem]:
    """The usage items of a period's regular records; equal in rating to :func:`usage_items` on every point."""
    regular = [r for r in records if r.kind is RecordKind.REGULAR]
    if not regular:
        return []
    account_id = regular[0].account_id
    cur = await conn.execute(USAGE_SUMS_SQL, {"account": account_id, "start": period.start, "end": period.end,
                                              "stride": timedelta(minutes=bucket_minutes(book)), "zone": timezone})
    rows: list[Any] = await cur.fetchall()
    buckets: defaultdict[str, list[Any]] = defaultdict(list)
    exact: dict[str, bool] = {}
    for product, n, at, quantity, summed, positive in rows:
        exact[product] = exact.get(product, True) and bool(summed) and bool(positive)
        if n:
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
