"""What an ingest node needs to route by account: every binding, as one index."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

from usagehub.core.binding import Binding, BindingIndex
from usagehub.storage.sessions import utc


async def binding_index(pool: AsyncConnectionPool) -> BindingIndex:
    """All bindings of all tenants (read-only; refreshed by the caller)."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT device_id, account_id, lower(valid), upper(valid) FROM bindings")
        rows = await cur.fetchall()
    return BindingIndex(Binding(device_id=str(r[0]), account_id=str(r[1]), valid_from=utc(r[2]),
                                valid_to=None if r[3] is None else utc(r[3])) for r in rows)
