"""Numbered SQL migrations applied at start, once each, under an advisory lock."""

from __future__ import annotations

import logging
from importlib import resources

from psycopg_pool import AsyncConnectionPool

from usagehub.storage.pool import mapped_errors

log = logging.getLogger(__name__)
_LOCK_KEY = 7_311_001  # pg_advisory_xact_lock key: two hubs starting together migrate once


def _migrations() -> list[tuple[str, str]]:
    folder = resources.files("usagehub.storage") / "migrations"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name.removesuffix(".sql"), p.read_text(encoding="utf-8")) for p in files]


async def migrate(pool: AsyncConnectionPool) -> list[str]:
    """Apply pending migrations; return the names applied now."""
    applied_now: list[str] = []
    async with mapped_errors(), pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, "
            "applied_at timestamptz NOT NULL DEFAULT now())")
        cur = await conn.execute("SELECT name FROM schema_migrations")
        done = {row[0] for row in await cur.fetchall()}
        for name, sql in _migrations():
            if name in done:
                continue
            await conn.execute(sql.encode())
            await conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
            applied_now.append(name)
    if applied_now:
        log.info("applied migrations: %s", ", ".join(applied_now))
    return applied_now


async def timescale_available(pool: AsyncConnectionPool) -> bool:
    """Whether the migrations put this database on TimescaleDB (the extension is created in it)."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
        return await cur.fetchone() is not None
