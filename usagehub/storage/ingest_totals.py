"""Durable ingest totals: added in the batch transaction, read back by ingestStats and /metrics."""

from __future__ import annotations

from collections.abc import Mapping

from psycopg_pool import AsyncConnectionPool

from usagehub.storage.pool import Connection

KINDS = ("messages", "accepted", "duplicates", "quarantined", "batches")

_ADD = (
    f"INSERT INTO ingest_totals (node, {', '.join(KINDS)}) VALUES (%s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (node) DO UPDATE SET "
    + ", ".join(f"{k} = ingest_totals.{k} + EXCLUDED.{k}" for k in KINDS)
    + ", updated_at = now()"
)


async def add_totals(conn: Connection, node: str, counts: Mapping[str, int]) -> None:
    """Add one batch's ``counts`` to the totals of ``node`` (inside the batch transaction)."""
    await conn.execute(_ADD, (node, *(int(counts.get(k, 0)) for k in KINDS)))


async def read_totals(pool: AsyncConnectionPool, *, lock_timeout_ms: int = 2000) -> dict[str, int]:
    """The totals over every node, as committed (gives up when a lock is not granted in time)."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{lock_timeout_ms}ms",))
        cur = await conn.execute(f"SELECT {', '.join(f'coalesce(sum({k}), 0)' for k in KINDS)} FROM ingest_totals")
        row = await cur.fetchone()
    assert row is not None
    return {k: int(str(v)) for k, v in zip(KINDS, row, strict=True)}
