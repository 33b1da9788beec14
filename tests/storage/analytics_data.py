"""Helpers for analytics storage tests: accounts and session points written the way the engine writes them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from psycopg_pool import AsyncConnectionPool

POINT_COLUMNS = "account_id, service, device_id, product, kind, aggregation, start_ts, end_ts, value"
Row = tuple[str | None, str, str, str, str, datetime, Decimal]  # account, service, device, product, kind, start, value


async def add_accounts(pool: AsyncConnectionPool, accounts: dict[str, str], market: str = "DE") -> None:
    """Accounts by id -> time zone."""
    async with pool.connection() as conn:
        for account, zone in accounts.items():
            await conn.execute("INSERT INTO accounts (account_id, name, market, timezone) VALUES (%s, %s, %s, %s)",
                               (account, f"Name of {account}", market, zone))


async def copy_points(pool: AsyncConnectionPool, rows: Sequence[Row]) -> None:
    """COPY points into session_points in one statement (one trigger firing)."""
    async with pool.connection() as conn, conn.cursor() as cur, cur.copy(
            f"COPY session_points ({POINT_COLUMNS}) FROM STDIN") as copy:
        for account, service, device, product, kind, start, value in rows:
            agg = "sum" if kind == "usage" else "count"
            await copy.write_row((account, service, device, product, kind, agg, start, start, value))
