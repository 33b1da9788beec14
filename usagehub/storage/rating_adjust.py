"""An invoice's adjustment lines (late usage of billed periods re-rated) from the kept sums where that is exact.

An adjustment re-rates a billed period twice: with the usage the bill had, and with the late usage added
(``rating_usage.rated_difference``). Which points the bill had is told by storage order: the prefix of the
product's points whose sum is the billed quantity (``rating_usage.split_at_quantity``); the points after it
are late. Read from every point, that is ~6000 points per product-month in Python and rated twice.

Where the month read would use ``rating_sums`` (a whole-hour bucket, every point a non-negative ``sum`` that
ends in the period, keys valid in the account's zone: ``rating_sums.KEPT_SUMS_SQL``), point values are never
negative, so the running sum in storage order never falls, and the prefix ends where it first exceeds the
billed quantity: the points after it (the *tail*, usually a few late ones) are those whose running sum is
above it. The server computes the running sum and ships only the tail and the billed points sharing a kept
bucket with it; the billed usage is each other kept bucket's sum and those billed points, and the late usage
is the tail's points up to where the running sum reaches billed plus adjustment, as items of their own,
exactly as the point read makes them (a bucket's billed points stay points: whether one of them or a late
point comes first in the bucket decides which crosses a graduated tier). The prefix
must end exactly on the billed quantity and the late points on the adjusted one, as ``split_at_quantity``
requires; anything else (and a negative adjustment) reads every point as before.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from usagehub.core.billing import BillingRecord
from usagehub.core.periods import Period
from usagehub.core.rating import Account, RatedLine, UsageItem
from usagehub.core.tariffs import PlanBook
from usagehub.core.vat import VatTable
from usagehub.storage.pool import Connection
from usagehub.storage.rating_sums import KEPT_SUMS_SQL, bucket_minutes, kept_sums_apply, sums_query
from usagehub.storage.rating_usage import (
    Adjusted,
    StoredPoint,
    adjusted_periods,
    items_of,
    point_adjustment_items,
    rated_difference,
)

# The points after the billed prefix of each product (the tail), with their running sum in storage order and
# the key of the kept bucket they are summed in (as KEPT_SUMS_SQL keys it: the local hour of the midpoint,
# local hours beginning at %(origin)s plus whole hours, merged per %(stride)s when the offsets are whole
# hours), and the billed points that share a bucket with a tail point. Those are read one by one: a bucket's
# sum is rated at the bucket's start, but a late point is rated at its midpoint, and which of the two comes
# first in the bucket decides which of them crosses a graduated tier. The window reads the account-month's
# points in the covering index (session_points_account_time) on the server; only the touched buckets' points
# cross to the client.
TAIL_SQL = """
SELECT product, point_id, device_id, start_ts, end_ts, value, label, aggregation, run, at, late
FROM (SELECT t.*, bool_or(t.late) OVER (PARTITION BY t.product COLLATE "C", t.at) AS touched
      FROM (SELECT p.*, p.run > b.billed AS late,
                   CASE WHEN %(merge)s THEN date_bin(%(stride)s, p.mh, timestamptz '1970-01-01 00:00:00+00')
                        ELSE p.mh END AS at
            FROM (SELECT product, point_id, device_id, start_ts, end_ts, value, label, aggregation,
                         date_bin('1 hour', date_add(start_ts, (end_ts - start_ts) / 2, 'UTC'), %(origin)s) AS mh,
                         sum(value) OVER (PARTITION BY product COLLATE "C" ORDER BY point_id) AS run
                  FROM session_points
                  WHERE account_id = %(account)s AND kind = 'usage' AND start_ts >= %(start)s
                    AND start_ts < %(end)s AND product = ANY(%(products)s)) p
            JOIN unnest(%(products)s::text[], %(billed)s::numeric[]) AS b(product, billed) USING (product)) t) u
WHERE touched
ORDER BY product COLLATE "C", point_id"""


async def adjustment_lines(conn: Connection, account: Account, period: Period, adjustments: Sequence[BillingRecord],
                           book: PlanBook, vat: VatTable) -> list[RatedLine]:
    """The adjustment lines of ``period``: each adjusted period re-rated with its late usage."""
    lines: list[RatedLine] = []
    for original, pairs in await adjusted_periods(conn, period, adjustments):
        kept = await kept_adjustment_items(conn, account, original, pairs, book)
        billed_items, late_items = kept or await point_adjustment_items(conn, account.account_id, original, pairs)
        lines += rated_difference(billed_items, late_items, account, original, book, vat)
    return lines


async def kept_adjustment_items(conn: Connection, account: Account, original: Period, pairs: Sequence[Adjusted],
                                book: PlanBook) -> tuple[list[UsageItem], list[UsageItem]] | None:
    """(billed items, late items) of one original period from the kept sums and the tail, or None where not exact."""
    minutes = bucket_minutes(book)
    products = [pair.target.product for pair in pairs]
    if (not kept_sums_apply(minutes, account.timezone, original) or len(set(products)) != len(products)
            or any(pair.adjustment.quantity < 0 for pair in pairs)):
        return None
    query, args = sums_query(account.account_id, original, account.timezone, minutes)
    assert query is KEPT_SUMS_SQL  # kept_sums_apply
    buckets: defaultdict[str, dict[datetime, Decimal]] = defaultdict(dict)
    rows: list[Any] = await (await conn.execute(query, args)).fetchall()
    for product, at, quantity, _used, exact in rows:
        if product in products and not exact:
            return None
        buckets[product][at] = quantity
    tails: defaultdict[str, list[Any]] = defaultdict(list)
    cur = await conn.execute(TAIL_SQL, args | {"products": products, "billed": [pair.billed for pair in pairs]})
    tail_rows: list[Any] = await cur.fetchall()
    for row in tail_rows:
        tails[row[0]].append(row)
    billed_items: list[UsageItem] = []
    late_items: list[UsageItem] = []
    for target, billed, adjustment in pairs:
        split = _split(buckets[target.product], tails[target.product], billed, billed + adjustment.quantity)
        if split is None:
            return None
        old, touched, late = split
        billed_items += [UsageItem(account_id=target.account_id, product=target.product, ts=at.astimezone(UTC),
                                   quantity=q, unit=target.unit, record_id=target.record_id) for at, q in old]
        billed_items += items_of(touched, sum((p.value for p in touched), Decimal(0)), target, original)
        late_items += items_of(late, adjustment.quantity, adjustment, original)
    return billed_items, late_items


def _split(kept: dict[datetime, Decimal], rows: list[Any], billed: Decimal, total: Decimal
           ) -> tuple[list[tuple[datetime, Decimal]], list[StoredPoint], list[StoredPoint]] | None:
    """(billed sums of the buckets without late points, the billed points of the others, late points).

    None when the prefixes do not end on the quantities, or a touched bucket's points do not add up to its sum.
    """
    tail = [r for r in rows if r[10]]
    before_tail = tail[0][8] - tail[0][5] if tail else sum(kept.values(), Decimal(0))
    if before_tail != billed:  # no prefix sums to the billed quantity
        return None
    late = [r for r in tail if r[8] <= total]
    if total != billed and (not late or late[-1][8] != total):  # no prefix sums to billed plus adjustment
        return None
    remaining = dict(kept)
    for row in rows:
        if row[9] not in remaining:
            return None
        remaining[row[9]] -= row[5]
    touched = {row[9] for row in rows}
    if any(remaining[at] != 0 for at in touched):
        return None
    return ([(at, q) for at, q in sorted(remaining.items()) if at not in touched and q != 0],
            [_stored(r) for r in rows if not r[10]], [_stored(r) for r in late])


def _stored(row: Any) -> StoredPoint:
    return StoredPoint(row[1], row[0], row[2], row[3].astimezone(UTC), row[4].astimezone(UTC), row[5], row[6],
                       row[7])
