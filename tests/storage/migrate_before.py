"""A database as an older release left it: for the tests of a migration over stored data."""

from __future__ import annotations

from usagehub.storage.migrations import _migrations
from usagehub.storage.pool import Connection


async def migrate_before(conn: Connection, first: str) -> None:
    """Apply (and record) every migration named before ``first``; ``migrate`` then applies the rest."""
    await conn.execute("CREATE TABLE schema_migrations (name text PRIMARY KEY, "
                       "applied_at timestamptz NOT NULL DEFAULT now())")
    for name, sql in _migrations():
        if name < first:
            await conn.execute(sql.encode())
            await conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
