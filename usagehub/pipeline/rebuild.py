"""Walk marks for sessions stored before marks existed: rebuilt once per account and service, at start.

Without marks a late point would be replayed from an empty walk; so each account and service that has
points but no marks has its sessions dropped and walked again over all its points, and its billing
records reconciled (a billed record is never edited: a difference becomes an adjustment).
"""

from __future__ import annotations

import logging

from psycopg_pool import AsyncConnectionPool

from usagehub.pipeline.sessions import SessionEngine
from usagehub.storage.marks import drop_sessions, point_instants, unmarked_groups
from usagehub.storage.pool import mapped_errors
from usagehub.storage.sessions import lock_accounts, zones_of

log = logging.getLogger(__name__)


async def rebuild_unmarked(engine: SessionEngine, pool: AsyncConnectionPool) -> int:
    """Rebuild the sessions of every account and service without marks; return how many were rebuilt."""
    async with mapped_errors(), pool.connection() as conn:
        groups = await unmarked_groups(conn)
    if groups:
        log.info("building session walk marks for %d account services stored before them", len(groups))
    for account, service in groups:
        async with mapped_errors(), pool.connection() as conn, conn.transaction():
            await lock_accounts(conn, [account])
            zones = await zones_of(conn, [account])
            touched = await drop_sessions(conn, account, service)
            instants = await point_instants(conn, account, service)
            touched |= await engine.rewalk(conn, {(account, service): instants}, zones, engine.clock())
            await engine.book.reconcile(conn, touched, zones)
    return len(groups)
