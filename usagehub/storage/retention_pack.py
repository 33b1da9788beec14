"""Rebuild the primary-key index of each finished month of events once, compactly (plain PostgreSQL).

Events arrive in time order for the whole fleet while the key starts with the
device, so each device's key range splits its index page every day and a
month's index ends about half full (104 B per event measured, 59 B rebuilt;
``bench/storage_size.py --breakdown``). Once a month is over (plus a settling
delay for late data) its partition's indexes are rebuilt with ``REINDEX …
CONCURRENTLY``, which neither blocks ingest nor late events into that month.
On TimescaleDB, where old chunks are compressed instead, nothing is done.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, date, datetime, timedelta

from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from usagehub.storage.archive import archive_finished_months
from usagehub.storage.archive_late import settle_archived_months
from usagehub.storage.partitions import add_months, existing_months, partitioned
from usagehub.storage.pool import mapped_errors

log = logging.getLogger(__name__)

SETTLE = timedelta(days=3)  # late data of a month mostly arrives within days; later rows still fit, less packed


def _partition(month: date) -> str:
    return f"events_{month:%Y_%m}"


async def pack_finished_months(pool: AsyncConnectionPool, now: datetime, *, settle: timedelta = SETTLE) -> list[str]:
    """Rebuild the indexes of event partitions of months over before ``now - settle``; the partitions packed."""
    async with mapped_errors(), pool.connection() as conn:
        if not await partitioned(conn):
            return []
        # An archived month's partition holds only its late rows (rows deleted by the archive until truncated by
        # storage/archive_late.py): rebuilding its indexes would be wasted work.
        cur = await conn.execute("SELECT partition FROM events_packed UNION SELECT partition FROM events_archived")
        done = {str(r[0]) for r in await cur.fetchall()}
        months = sorted(m for m in await existing_months(conn)
                        if datetime(*add_months(m, 1).timetuple()[:3], tzinfo=UTC) <= now - settle
                        and _partition(m) not in done)
    packed: list[str] = []
    for month in months:
        name = _partition(month)
        # REINDEX CONCURRENTLY cannot run in a transaction block: its own autocommit connection.
        async with mapped_errors(), pool.connection() as conn:
            await conn.set_autocommit(True)
            # A REINDEX CONCURRENTLY interrupted (hub stopped, connection lost) leaves an invalid *_ccnew index
            # that every insert would still maintain: drop it before trying again.
            cur = await conn.execute(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE i.indrelid = %s::regclass AND NOT i.indisvalid AND c.relname ~ '_ccnew[0-9]*$'", (name,))
            for (leftover,) in await cur.fetchall():
                drop = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(str(leftover)))
                await conn.execute(drop)
            size = "SELECT pg_indexes_size(%s::regclass)"
            before = int(str((await (await conn.execute(size, (name,))).fetchone() or [0])[0]))
            await conn.execute(sql.SQL("REINDEX TABLE CONCURRENTLY {}").format(sql.Identifier(name)))
            after = int(str((await (await conn.execute(size, (name,))).fetchone() or [0])[0]))
            await conn.execute("INSERT INTO events_packed (partition, bytes_before, bytes_after) VALUES (%s, %s, %s) "
                               "ON CONFLICT (partition) DO NOTHING", (name, before, after))
        log.info("event partition %s packed: indexes %d -> %d bytes", name, before, after)
        packed.append(name)
    return packed


async def pack_daily(pool: AsyncConnectionPool, *, first_archive_s: float = 3600.0) -> None:
    """Pack finished months at start; archive, then pack, ``first_archive_s`` later and then once a day.

    Archiving (``storage/archive.py``) moves a finished month's rows into ``events_archive`` and leaves an empty
    partition for late rows; the same round folds late rows of archived months in and truncates emptied
    partitions (``storage/archive_late.py``); packing then rebuilds the indexes of the months that stay as rows.
    Writers wait while a month is archived, so the first round does not run at start, when a restarted hub drains
    its backlog. A failure is logged and retried the next round.
    """
    await _round(pool, archive=False)
    await asyncio.sleep(first_archive_s)
    while True:
        await _round(pool, archive=True)
        await asyncio.sleep(86400)


async def _round(pool: AsyncConnectionPool, *, archive: bool) -> None:
    if archive:
        try:
            await archive_finished_months(pool, datetime.now(UTC), settle=SETTLE)
            # late rows of archived months folded in, emptied partitions truncated once no older snapshot exists
            await settle_archived_months(pool)
        except Exception:  # ingest is unaffected; the month stays as rows until the next round
            log.exception("archiving finished event months failed")
    try:
        await pack_finished_months(pool, datetime.now(UTC))
    except Exception:  # ingest is unaffected; the month stays as it is until the next round
        log.exception("packing finished event months failed")
