"""Daily refresh of behaviour features from the rollups and, when prepaid exists, the ledger."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from usagehub.core.analytics.features import (
    AccountFeatures,
    DayUsage,
    LedgerEntry,
    UsageFeatures,
    compute_account_features,
    compute_usage_features,
)
from usagehub.storage.pool import Connection
from usagehub.storage.rollups import fetch_all

_SLACK = timedelta(hours=15)  # wider than any zone offset
PRODUCT_COLUMNS = ("account_id", "product", "as_of", "days", "avg_daily", "peak_daily", "volatility", "mom_trend",
                   "weekend_ratio", "weekend_share", "night_share", "morning_share", "afternoon_share",
                   "evening_share", "hour_shares")
ACCOUNT_COLUMNS = ("account_id", "as_of", "topups", "topup_typical", "days_near_zero", "activity")


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshSettings:
    """Window and thresholds of the daily refresh."""

    window: int = 30
    security_service: str = "security"
    near_zero: Decimal = Decimal(1)


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshResult:
    """How many feature rows a refresh wrote."""

    as_of: date
    products: int
    accounts: int


async def _usage_inputs(conn: Connection, as_of: date, window: int) -> tuple[
        dict[tuple[str, str], list[DayUsage]], dict[tuple[str, str], date], dict[tuple[str, str], list[Decimal]]]:
    lo = as_of - timedelta(days=2 * window - 1)
    cur = await conn.execute(
        "SELECT account_id, product, day, sum(quantity) FROM rollup_daily WHERE day >= %s AND day <= %s "
        "AND usage_count > 0 GROUP BY 1, 2, 3", (lo, as_of))
    days: defaultdict[tuple[str, str], list[DayUsage]] = defaultdict(list)
    for account, product, day, quantity in await fetch_all(cur):
        days[(str(account), str(product))].append(DayUsage(day=day, quantity=Decimal(quantity)))
    cur = await conn.execute("SELECT account_id, product, min(day) FROM rollup_daily WHERE usage_count > 0 "
                             "AND day <= %s GROUP BY 1, 2", (as_of,))
    firsts = {(str(a), str(p)): d for a, p, d in await fetch_all(cur)}
    start = as_of - timedelta(days=window - 1)
    lo_ts, hi_ts = datetime(start.year, start.month, start.day), datetime(as_of.year, as_of.month, as_of.day)
    hi_ts += timedelta(days=1)
    cur = await conn.execute(
        "SELECT p.account_id, p.product, extract(hour FROM p.start_ts AT TIME ZONE a.timezone)::int, "
        "sum(p.value) FROM session_points p JOIN accounts a ON a.account_id = p.account_id "
        "WHERE p.start_ts >= %s::timestamptz AND p.start_ts < %s::timestamptz "
        "AND p.start_ts AT TIME ZONE a.timezone >= %s AND p.start_ts AT TIME ZONE a.timezone < %s "
        "AND p.kind = 'usage' GROUP BY 1, 2, 3",
        ((lo_ts - _SLACK).isoformat() + "+00:00", (hi_ts + _SLACK).isoformat() + "+00:00", lo_ts, hi_ts))
    hours: defaultdict[tuple[str, str], list[Decimal]] = defaultdict(lambda: [Decimal(0)] * 24)
    for account, product, hour, quantity in await fetch_all(cur):
        hours[(str(account), str(product))][int(hour)] += Decimal(quantity)
    return days, firsts, hours


async def _ledger(conn: Connection, as_of: date, window: int) -> tuple[
        dict[str, list[LedgerEntry]], dict[str, Decimal]]:
    """Ledger entries in the window (local days) and each account's balance before it; empty without prepaid."""
    cur = await conn.execute("SELECT to_regclass('ledger_entries') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not row[0]:
        return {}, {}
    start = as_of - timedelta(days=window - 1)
    local_day = "(l.created_at AT TIME ZONE a.timezone)::date"
    cur = await conn.execute(
        f"SELECT l.account_id, {local_day}, l.kind, l.amount, l.balance_after FROM ledger_entries l "
        f"JOIN accounts a ON a.account_id = l.account_id WHERE {local_day} BETWEEN %s AND %s "
        "ORDER BY l.account_id, l.created_at, l.entry_id", (start, as_of))
    entries: defaultdict[str, list[LedgerEntry]] = defaultdict(list)
    for account, day, kind, amount, balance in await fetch_all(cur):
        entries[str(account)].append(LedgerEntry(day=day, kind=str(kind), amount=Decimal(amount),
                                                 balance_after=None if balance is None else Decimal(balance)))
    cur = await conn.execute(
        f"SELECT DISTINCT ON (l.account_id) l.account_id, l.balance_after FROM ledger_entries l "
        f"JOIN accounts a ON a.account_id = l.account_id WHERE {local_day} < %s AND l.balance_after IS NOT NULL "
        "ORDER BY l.account_id, l.created_at DESC, l.entry_id DESC", (start,))
    opening = {str(a): Decimal(b) for a, b in await fetch_all(cur)}
    return entries, opening


async def refresh_features(conn: Connection, as_of: date, settings: RefreshSettings | None = None) -> RefreshResult:
    """Recompute every account's features as of the local day ``as_of`` and replace the stored ones."""
    s = settings or RefreshSettings()
    days, firsts, hours = await _usage_inputs(conn, as_of, s.window)
    products = [compute_usage_features(as_of=as_of, days=days.get(k, []), hour_totals=hours.get(k, [Decimal(0)] * 24),
                                       first_day=first, window=s.window)
                for k, first in sorted(firsts.items())]
    keys = sorted(firsts)
    entries, opening = await _ledger(conn, as_of, s.window)
    start = as_of - timedelta(days=s.window - 1)
    cur = await conn.execute(
        "SELECT a.account_id, coalesce(sum(r.activity_count + r.usage_count), 0) FROM accounts a "
        "LEFT JOIN rollup_daily r ON r.account_id = a.account_id AND r.service = %s AND r.day BETWEEN %s AND %s "
        "GROUP BY 1", (s.security_service, start, as_of))
    accounts = [(str(a), compute_account_features(
        as_of=as_of, entries=entries.get(str(a), []), opening_balance=opening.get(str(a)), activity=int(n),
        window=s.window, near_zero=s.near_zero)) for a, n in await fetch_all(cur)]
    async with conn.transaction():
        await conn.execute("DELETE FROM product_features")
        await conn.execute("DELETE FROM account_features")
        await _copy(conn, "product_features", PRODUCT_COLUMNS,
                    [_product_row(k, f) for k, f in zip(keys, products, strict=True)])
        await _copy(conn, "account_features", ACCOUNT_COLUMNS, [_account_row(a, f) for a, f in accounts])
    return RefreshResult(as_of=as_of, products=len(products), accounts=len(accounts))


def _product_row(key: tuple[str, str], f: UsageFeatures) -> tuple[Any, ...]:
    return (key[0], key[1], f.as_of, f.days, f.avg_daily, f.peak_daily, f.volatility, f.mom_trend, f.weekend_ratio,
            f.weekend_share, f.night_share, f.morning_share, f.afternoon_share, f.evening_share, list(f.hour_shares))


def _account_row(account: str, f: AccountFeatures) -> tuple[Any, ...]:
    return (account, f.as_of, f.topups, f.topup_typical, f.days_near_zero, f.activity)


async def _copy(conn: Connection, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    async with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            await copy.write_row(row)
