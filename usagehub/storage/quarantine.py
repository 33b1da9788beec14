"""Quarantine retention: entries older than the retention, and the oldest beyond a row cap, are deleted."""

from __future__ import annotations

from datetime import datetime, timedelta

from psycopg_pool import AsyncConnectionPool

from usagehub import metrics
from usagehub.storage.pool import mapped_errors


async def prune_quarantine(pool: AsyncConnectionPool, *, now: datetime, retention: timedelta,
                           max_rows: int, chunk: int = 10_000) -> int:
    """Delete entries last seen before ``now - retention``, then the oldest beyond ``max_rows``; the count."""
    deleted = 0
    async with mapped_errors(), pool.connection() as conn:
        while True:  # in chunks, so a huge backlog never holds one long transaction
            cur = await conn.execute(
                "DELETE FROM quarantine WHERE quarantine_id IN (SELECT quarantine_id FROM quarantine "
                "WHERE coalesce(last_seen_at, received_at) < %s LIMIT %s)", (now - retention, chunk))
            deleted += cur.rowcount
            if cur.rowcount < chunk:
                break
        cur = await conn.execute("SELECT count(*) FROM quarantine")
        row = await cur.fetchone()
        excess = int(row[0]) - max_rows if row else 0
        while excess > 0:
            cur = await conn.execute(
                "DELETE FROM quarantine WHERE quarantine_id IN (SELECT quarantine_id FROM quarantine "
                "ORDER BY quarantine_id LIMIT %s)", (min(excess, chunk),))
            if cur.rowcount == 0:
                break
            deleted += cur.rowcount
            excess -= cur.rowcount
    metrics.QUARANTINE_PRUNED.inc(deleted)
    return deleted
