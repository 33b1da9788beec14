"""Stored usage as rating input: billing records and session points of an account into core usage items.

Billing records are the truth of what a period bills; session points say *when*
the usage happened, which time-of-use windows and plan changes need. A usage
point covering ``(a, b]`` is placed at its midpoint (an instant at itself): an
interval read on a window boundary lands in the window it covers. When the
points of a product do not add up to its record (an aggregation other than
``sum``), the record's quantity is one item at the product's last point.

Late data: a billed record's adjustment (in a later period) is rated by
``core.rating.diff_lines`` over the original period: the points stored before
the bill (a prefix in storage order, since sessions, billing runs and ingest of
an account are serialised by its lock) against those plus the late ones.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from usagehub.core.billing import BillingRecord, RecordKind
from usagehub.core.calendars import BillingPeriod
from usagehub.core.periods import Period
from usagehub.core.rating import Account, RatedLine, UsageItem, diff_lines, rate
from usagehub.core.tariffs import PlanBook
from usagehub.core.vat import VatTable
from usagehub.storage.billing import RECORD_COLUMNS, record_of
from usagehub.storage.pool import Connection


class StoredPoint(NamedTuple):
    """A usage point as stored: ``point_id`` orders points by the commit that wrote them.

    A named tuple rather than a frozen dataclass: an account-month is ~6000 points, and a frozen
    dataclass's ``__init__`` (one ``object.__setattr__`` per field) cost 9 µs each (bench/storage_size.py).
    """

    point_id: int
    product: str
    device_id: str
    start: datetime
    end: datetime
    value: Decimal
    label: str | None
    aggregation: str


def billing_period(period: Period) -> BillingPeriod:
    """A session-core period as the rating core's period."""
    return BillingPeriod(start=period.start, end=period.end)


async def period_records(conn: Connection, account_id: str, period: Period) -> list[BillingRecord]:
    """The billing records (regular and adjustments) an account has in ``period``."""
    cur = await conn.execute(f"SELECT {RECORD_COLUMNS} FROM billing_records WHERE account_id = %s "
                             "AND period_start = %s ORDER BY record_id", (account_id, period.start))
    return [record_of(r) for r in await cur.fetchall()]


# session_points_account_time (migration 0019) makes this an index-only scan.
USAGE_POINTS_SQL = (
    "SELECT point_id, product, device_id, start_ts, end_ts, value, label, aggregation FROM session_points "
    "WHERE account_id = %s AND kind = 'usage' AND start_ts >= %s AND start_ts < %s ORDER BY point_id")


async def usage_points(conn: Connection, account_id: str, period: Period) -> list[StoredPoint]:
    """The account's usage points starting in ``period``, in storage order."""
    cur = await conn.execute(USAGE_POINTS_SQL, (account_id, period.start, period.end))
    rows: list[Any] = await cur.fetchall()
    return [StoredPoint(r[0], r[1], r[2], _utc(r[3]), _utc(r[4]), r[5], r[6], r[7]) for r in rows]


def _utc(ts: datetime) -> datetime:
    # A session in UTC hands out UTC datetimes already; astimezone costs ~2 µs, replace(tzinfo=) more.
    return ts if ts.tzinfo is UTC else ts.astimezone(UTC)


def net(points: Iterable[StoredPoint]) -> list[StoredPoint]:
    """Points of the same device, product, span and label summed (a retraction cancels its entry)."""
    sums: defaultdict[tuple[Any, ...], Decimal] = defaultdict(Decimal)
    first: dict[tuple[Any, ...], StoredPoint] = {}
    for p in points:
        key = (p.device_id, p.product, p.start, p.end, p.label)
        sums[key] += p.value
        first.setdefault(key, p)
    return [first[k]._replace(value=v) for k, v in sums.items() if v != 0]


def when(point: StoredPoint, period: Period) -> datetime:
    """The instant a point's usage is rated at: the midpoint of its span, inside ``period``."""
    middle = point.start + (point.end - point.start) / 2
    return middle if period.contains(middle) else point.start


def _item(account_id: str, product: str, ts: datetime, quantity: Decimal, record: BillingRecord) -> UsageItem:
    return UsageItem(account_id=account_id, product=product, ts=ts, quantity=quantity, unit=record.unit,
                     record_id=record.record_id)


def items_of(points: Sequence[StoredPoint], quantity: Decimal, record: BillingRecord, period: Period,
             *, anchor_points: Sequence[StoredPoint] = ()) -> list[UsageItem]:
    """Usage items worth ``quantity`` of ``record``'s product.

    The netted points stored up to where they add up to ``quantity`` (all of them
    for an open record; for a billed one, those it billed: later ones are late
    data, adjusted in a later period).
    """
    split = split_at_quantity(points, quantity, quantity) if all(p.aggregation == "sum" for p in points) else None
    if split is not None:
        return [_item(record.account_id, record.product, when(p, period), p.value, record) for p in net(split[0])]
    if quantity == 0:
        return []
    pool = [*anchor_points, *points]
    anchor = max((when(p, period) for p in pool), default=period.start)
    return [_item(record.account_id, record.product, anchor, quantity, record)]


def usage_items(records: Iterable[BillingRecord], points: Sequence[StoredPoint], period: Period) -> list[UsageItem]:
    """The usage items of a period's regular records."""
    by_product: defaultdict[str, list[StoredPoint]] = defaultdict(list)
    for p in points:
        by_product[p.product].append(p)
    items: list[UsageItem] = []
    for record in records:
        if record.kind is RecordKind.REGULAR:
            items += items_of(by_product[record.product], record.quantity, record, period)
    return items


def split_at_quantity(points: Sequence[StoredPoint], billed: Decimal,
                      total: Decimal) -> tuple[list[StoredPoint], list[StoredPoint]] | None:
    """(billed points, late points): the storage-order prefixes whose sums are ``billed`` and ``total``."""
    running, cut_billed, cut_total = Decimal(0), None, None
    sums = [Decimal(0)]
    for p in points:
        running += p.value
        sums.append(running)
    for index in range(len(sums) - 1, -1, -1):
        if cut_total is None and sums[index] == total:
            cut_total = index
        if cut_total is not None and sums[index] == billed:
            cut_billed = index
            break
    if cut_total is None or cut_billed is None:
        return None
    return list(points[:cut_billed]), list(points[cut_billed:cut_total])


async def _record(conn: Connection, record_id: str) -> BillingRecord | None:
    cur = await conn.execute(f"SELECT {RECORD_COLUMNS} FROM billing_records WHERE record_id = %s", (record_id,))
    row = await cur.fetchone()
    return None if row is None else record_of(row)


async def _adjusted_before(conn: Connection, target: BillingRecord, before: datetime) -> Decimal:
    cur = await conn.execute("SELECT coalesce(sum(quantity), 0) FROM billing_records WHERE adjusts = %s "
                             "AND period_start < %s", (target.record_id, before))
    row = await cur.fetchone()
    return Decimal(row[0]) if row else Decimal(0)  # type: ignore[arg-type]


class Adjusted(NamedTuple):
    """A billed record, the quantity billed for it before this invoice, and its adjustment in this invoice."""

    target: BillingRecord
    billed: Decimal
    adjustment: BillingRecord


async def adjusted_periods(conn: Connection, period: Period,
                           adjustments: Sequence[BillingRecord]) -> list[tuple[Period, list[Adjusted]]]:
    """The adjusted (original) periods of ``period``'s adjustments, in time order, with their records."""
    groups: defaultdict[Period, list[Adjusted]] = defaultdict(list)
    for adjustment in adjustments:
        target = await _record(conn, adjustment.adjusts or "")
        if target is not None:
            billed = target.quantity + await _adjusted_before(conn, target, period.start)
            groups[target.period].append(Adjusted(target, billed, adjustment))
    return sorted(groups.items())


def rated_difference(billed_items: list[UsageItem], late_items: list[UsageItem], account: Account,
                     original: Period, book: PlanBook, vat: VatTable) -> list[RatedLine]:
    """The adjustment lines of one original period: its billed usage re-rated with the late usage."""
    bp, cuts = billing_period(original), vat.change_dates(account.market)
    before = rate(billed_items, book, account, bp, split_at=cuts)
    after = rate([*billed_items, *late_items], book, account, bp, split_at=cuts)
    return diff_lines(before, after, bp, cause=late_items)


async def point_adjustment_items(conn: Connection, account_id: str, original: Period,
                                 pairs: Sequence[Adjusted]) -> tuple[list[UsageItem], list[UsageItem]]:
    """(billed items, late items) of one original period from every point: the storage-order prefix splits them."""
    points = await usage_points(conn, account_id, original)
    billed_items: list[UsageItem] = []
    late_items: list[UsageItem] = []
    for target, billed, adjustment in pairs:
        own = [p for p in points if p.product == target.product]
        split = split_at_quantity(own, billed, billed + adjustment.quantity)
        old, late = split if split else ([], [])
        billed_items += items_of(old, billed, target, original, anchor_points=own)
        late_items += items_of(late, adjustment.quantity, adjustment, original, anchor_points=own)
    return billed_items, late_items


async def point_adjustment_lines(conn: Connection, account: Account, period: Period,
                                 adjustments: Sequence[BillingRecord], book: PlanBook,
                                 vat: VatTable) -> list[RatedLine]:
    """The adjustment lines of ``period`` read from every point (storage.rating_adjust reads kept sums first)."""
    lines: list[RatedLine] = []
    for original, pairs in await adjusted_periods(conn, period, adjustments):
        billed_items, late_items = await point_adjustment_items(conn, account.account_id, original, pairs)
        lines += rated_difference(billed_items, late_items, account, original, book, vat)
    return lines
