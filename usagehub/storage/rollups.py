"""Series read from the rollup tables, in buckets aligned to each account's zone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from usagehub.core.analytics.buckets import Bucket
from usagehub.storage.pool import Connection

# Zone offsets lie within -12..+14 hours: a UTC pre-filter this wide never drops a local bucket.
_ZONE_SLACK = timedelta(hours=15)
# The UTC quarter-hour a session point counts in (the quarter of its start).
QUARTER = "date_bin('15 minutes', p.start_ts, timestamptz '2000-01-01 00:00:00+00')"
_TRUNC = {Bucket.HOUR: "hour", Bucket.DAY: "day", Bucket.WEEK: "week", Bucket.MONTH: "month"}


class Scope(StrEnum):
    """What a series sums over."""

    FLEET = "fleet"
    ACCOUNT = "account"
    DEVICE = "device"
    MARKET = "market"
    SEGMENT = "segment"


@dataclass(frozen=True, slots=True, kw_only=True)
class SeriesPoint:
    """One bucket: its local wall-clock start, the usage quantity and the activity count in it."""

    label: datetime
    quantity: Decimal
    activity: int
    accounts: int


def _filters(scope: Scope, key: str | None, product: str | None, table: str) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if product is not None:
        where.append(f"{table}.product = %s")
        params.append(product)
    if scope is Scope.ACCOUNT or scope is Scope.DEVICE:
        column = "account_id" if scope is Scope.ACCOUNT else "device_id"
        where.append(f"{table}.{column} = %s")
        params.append(key)
    elif scope is Scope.MARKET:
        where.append("a.market = %s")
        params.append(key)
    elif scope is Scope.SEGMENT:
        where.append(f"{table}.account_id IN (SELECT account_id FROM segment_members WHERE segment_id = %s)")
        params.append(int(key or 0))
    return "".join(f" AND {w}" for w in where), params


async def series(conn: Connection, *, tenant: str, scope: Scope, key: str | None, product: str | None,
                 bucket: Bucket, since: date, until: date) -> list[SeriesPoint]:
    """Usage in [since, until) local dates per bucket; each account's local buckets are summed by label.

    Day, week and month come from the daily rollup (already keyed by local date); 15-minute and
    hour buckets, and any device series, from session_points regrouped in each account's zone.
    """
    if bucket in (Bucket.QUARTER, Bucket.HOUR) or scope is Scope.DEVICE:
        return await _from_quarters(conn, tenant, scope, key, product, bucket, since, until)
    label = "r.day::timestamp" if bucket is Bucket.DAY else f"date_trunc('{_TRUNC[bucket]}', r.day::timestamp)"
    if scope in (Scope.FLEET, Scope.MARKET):
        return await _from_fleet(conn, tenant, key if scope is Scope.MARKET else None, product, label, since, until)
    extra, params = _filters(scope, key, product, "r")
    cur = await conn.execute(
        f"SELECT {label} AS label, sum(r.quantity), sum(r.activity_count), count(DISTINCT r.account_id) "
        "FROM rollup_daily r JOIN accounts a ON a.account_id = r.account_id "
        f"WHERE r.day >= %s AND r.day < %s AND a.tenant = %s{extra} GROUP BY 1 ORDER BY 1",
        [since, until, tenant, *params])
    return [_point(row) for row in await fetch_all(cur)]


async def _from_fleet(conn: Connection, tenant: str, market: str | None, product: str | None, label: str,
                      since: date, until: date) -> list[SeriesPoint]:
    """Fleet and market series from the per-market daily rollup (a few rows per day).

    ``accounts`` of a bucket is the largest number of accounts with data for one product on one day
    of it (with a product filter: that product's), the count the daily rollup gives per product.
    """
    cur = await conn.execute(
        f"SELECT label, sum(q), sum(ac), max(n) FROM (SELECT {label} AS label, r.day, sum(r.quantity) AS q, "
        "sum(r.activity_count) AS ac, max(r.accounts) AS n FROM rollup_fleet_daily r "
        "WHERE r.tenant = %s AND r.day >= %s AND r.day < %s AND (%s::text IS NULL OR r.market = %s) "
        "AND (%s::text IS NULL OR r.product = %s) AND (r.accounts <> 0 OR r.usage_count <> 0 OR r.activity_count <> 0) "
        "GROUP BY 1, 2) d GROUP BY 1 ORDER BY 1",
        [tenant, since, until, market, market, product, product])
    return [_point(row) for row in await fetch_all(cur)]


async def _from_quarters(conn: Connection, tenant: str, scope: Scope, key: str | None, product: str | None,
                         bucket: Bucket, since: date, until: date) -> list[SeriesPoint]:
    """Quarter-hour and hour buckets (and device series) straight from session_points.

    A point counts in the UTC quarter of its start, regrouped in its account's zone (every real offset is a
    multiple of 15 minutes); usage points sum quantities, gauge and state points count activity. The covering
    index on (account_id, start_ts) serves it; unbound points have no account and count nowhere.
    """
    extra, params = _filters(scope, key, product, "p")
    local = f"({QUARTER} AT TIME ZONE a.timezone)"
    label = local if bucket is Bucket.QUARTER else f"date_trunc('{_TRUNC[bucket]}', {local})"
    lo, hi = datetime(since.year, since.month, since.day), datetime(until.year, until.month, until.day)
    cur = await conn.execute(
        f"SELECT {label} AS label, sum(p.value) FILTER (WHERE p.kind = 'usage'), "
        "count(*) FILTER (WHERE p.kind <> 'usage'), count(DISTINCT p.account_id) "
        "FROM session_points p JOIN accounts a ON a.account_id = p.account_id "
        f"WHERE p.start_ts >= %s::timestamptz AND p.start_ts < %s::timestamptz "
        f"AND {local} >= %s AND {local} < %s AND a.tenant = %s{extra} GROUP BY 1 ORDER BY 1",
        [_utc(lo - _ZONE_SLACK), _utc(hi + _ZONE_SLACK), lo, hi, tenant, *params])
    return [_point(row) for row in await fetch_all(cur)]


async def fetch_all(cur: Any) -> list[Any]:
    """Rows as ``Any`` tuples: the SQL above fixes their types, mypy cannot see them."""
    rows: list[Any] = await cur.fetchall()
    return rows


def _utc(naive: datetime) -> str:
    return naive.isoformat() + "+00:00"


def _point(row: tuple[Any, ...]) -> SeriesPoint:
    return SeriesPoint(label=row[0], quantity=Decimal(row[1] or 0), activity=int(row[2] or 0),
                       accounts=int(row[3]))


@dataclass(frozen=True, slots=True, kw_only=True)
class Consumer:
    """An account and its usage of a product over a range."""

    account_id: str
    name: str
    market: str
    quantity: Decimal


async def top_consumers(conn: Connection, *, tenant: str, product: str, market: str | None, since: date,
                        until: date, limit: int) -> list[Consumer]:
    """The ``limit`` accounts using the most of ``product`` in [since, until), optionally in one market."""
    cur = await conn.execute(
        "SELECT r.account_id, a.name, a.market, sum(r.quantity) AS q FROM rollup_daily r "
        "JOIN accounts a ON a.account_id = r.account_id "
        "WHERE r.product = %s AND r.day >= %s AND r.day < %s AND a.tenant = %s "
        "AND (%s::text IS NULL OR a.market = %s) GROUP BY 1, 2, 3 ORDER BY q DESC, r.account_id LIMIT %s",
        (product, since, until, tenant, market, market, limit))
    return [Consumer(account_id=str(r[0]), name=str(r[1]), market=str(r[2]), quantity=Decimal(r[3]))
            for r in await fetch_all(cur)]


async def rebuild(conn: Connection) -> None:
    """Recompute both rollups from session_points (after an account's zone changes)."""
    await conn.execute("SELECT analytics_rebuild_rollups()")
