"""Fold each finished month of events into ``events_archive``, a row per meter and UTC day (plain PostgreSQL).

A row per event costs at least ~130 B on plain PostgreSQL (168 B measured after retention_pack);
a day of one meter per row, its columns as arrays of small integers compressed by TOAST, costs ~29 B
(migration 0039, ``bench/archive_layouts.py``). Once a month is over plus ``SETTLE`` its partition's
rows move there and are deleted from the partition, so late rows of that month still have a home.
Everything happens in one transaction (rows copied, deleted from the partition, the partition given the
guard trigger, the month recorded): a hub stopped midway leaves the month as it was, and the next round
archives it. Only rows of the archived month wait while it is copied (its partition is locked in
EXCLUSIVE mode: readers go on); ingest into the other months goes on. The lock is tried with a timeout
and the month retried the next round when not granted.

DELETE, not TRUNCATE (migration 0045): TRUNCATE is not MVCC-safe, so a statement whose snapshot predates the
archive and that reached the partition after it saw the month neither as rows nor archived. After a DELETE a
snapshot older than the archive reads the rows and a newer one the archive, exactly. The partition's space is
given back by a later round (``storage/archive_late.py``: TRUNCATE once no snapshot older than the DELETE can
exist), which also folds the month's late rows into the archive.

Readers see archived events through the views ``events_all`` and ``events_described``; the stored
neighbours of a late reading (``storage/usage.py``) probe the archive too; a late event whose identity
is archived is a duplicate: the staged insert leaves it out, and the partition's trigger refuses it to the
direct COPY (which then takes the staged insert). On TimescaleDB nothing is done.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from usagehub.errors import StorageError
from usagehub.storage.partitions import add_months, existing_months, partitioned
from usagehub.storage.pool import Connection, mapped_errors

log = logging.getLogger(__name__)

_FOLD = """
INSERT INTO events_archive (device_id, meter, day, ts_us, event_id, value, meta_id, received_us, ingested_us,
                            reset_marker, text_value)
SELECT device_id, meter, events_archive_day(ts),
       array_agg(events_archive_us(ts) {o}), array_agg(event_id {o}), array_agg(value {o}), array_agg(meta_id {o}),
       array_agg((extract(epoch FROM received_at - ts) * 1000000)::bigint {o}),
       array_agg((extract(epoch FROM ingested_at - received_at) * 1000000)::bigint {o}),
       CASE WHEN bool_or(reset_marker IS NOT NULL) THEN array_agg(reset_marker {o}) END,
       CASE WHEN bool_or(text_value IS NOT NULL) THEN array_agg(text_value {o}) END
FROM {part} GROUP BY device_id, meter, events_archive_day(ts)
""".replace("{o}", "ORDER BY ts, event_id")


def _partition(month: date) -> str:
    return f"events_{month:%Y_%m}"


def _bounds(month: date) -> tuple[datetime, datetime]:
    end = add_months(month, 1)
    return datetime(month.year, month.month, 1, tzinfo=UTC), datetime(end.year, end.month, 1, tzinfo=UTC)


async def archive_finished_months(pool: AsyncConnectionPool, now: datetime, *, settle: timedelta,
                                  lock_timeout_ms: int = 2000) -> list[str]:
    """Archive the event partitions of months over before ``now - settle``; the partitions archived.

    ``settle`` is retention_pack's ``SETTLE`` in the hub: late data of a month mostly arrives within it.
    """
    async with mapped_errors(), pool.connection() as conn:
        if not await partitioned(conn):
            return []
        cur = await conn.execute("SELECT partition FROM events_archived")
        done = {str(r[0]) for r in await cur.fetchall()}
        months = sorted(m for m in await existing_months(conn)
                        if _bounds(m)[1] <= now - settle and _partition(m) not in done)
    archived: list[str] = []
    for month in months:
        async with mapped_errors(), pool.connection() as conn:
            if await archive_month(conn, month, lock_timeout_ms=lock_timeout_ms):
                archived.append(_partition(month))
    return archived


async def archive_month(conn: Connection, month: date, *, lock_timeout_ms: int = 2000) -> bool:
    """Move ``month``'s rows into the archive and empty its partition, in one transaction; False if none."""
    name = _partition(month)
    part = sql.Identifier(name)
    async with conn.transaction():
        if not await partitioned(conn) or month not in await existing_months(conn):
            return False  # TimescaleDB (chunks, compressed instead), or no such month
        await conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout_ms)}ms",))
        # Writers into this month wait from here on (no row can enter it while it is copied); readers go on,
        # and so does ingest into every other month: rows are routed to a partition, and locked there.
        await conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(part))
        done = await (await conn.execute("SELECT 1 FROM events_archived WHERE partition = %s", (name,))).fetchone()
        if done is not None or month not in await existing_months(conn):
            return False
        count = ("SELECT count(*), pg_total_relation_size({p}::regclass), pg_total_relation_size('events_archive') "
                 "FROM {t}")
        row = await (await conn.execute(sql.SQL(count).format(p=sql.Literal(name), t=part))).fetchone()
        events, before, archive_before = (int(str(v)) for v in (row or (0, 0, 0)))
        if events == 0:
            return False
        rows = (await conn.execute(sql.SQL(_FOLD).format(part=part))).rowcount
        grown = await (await conn.execute("SELECT pg_total_relation_size('events_archive')")).fetchone()
        after = int(str((grown or [0])[0])) - archive_before  # the archive's growth: heap, TOAST and key
        await _empty_partition(conn, month, events)
        await conn.execute(
            "INSERT INTO events_archived (partition, month_start, month_end, events, rows, bytes_before, bytes_after, "
            "emptied_xid) VALUES (%s, %s, %s, %s, %s, %s, %s, pg_current_xact_id())",
            (name, *_bounds(month), events, rows, before, after))
    log.info("event partition %s archived: %d events in %d rows, %d -> %d bytes", name, events, rows, before, after)
    return True


async def _empty_partition(conn: Connection, month: date, events: int) -> None:
    """Delete ``month``'s rows (all of them were copied) and give the partition the trigger that refuses
    archived identities.

    DELETE, not TRUNCATE: a snapshot taken before this transaction commits still reads the rows (see the module
    docstring); the space is reclaimed later (``archive_late.truncate_emptied``). Both lock the partition
    alone: detaching it would take an ACCESS EXCLUSIVE lock on ``events`` itself, which waits for every batch in
    flight and stops every later one.
    """
    part = sql.Identifier(_partition(month))
    deleted = (await conn.execute(sql.SQL("DELETE FROM {}").format(part))).rowcount
    if deleted != events:  # the partition is locked against writers: never, but never lose a row silently
        raise StorageError(f"{_partition(month)}: {deleted} rows deleted, {events} copied")
    await conn.execute(sql.SQL("CREATE TRIGGER events_archive_guard BEFORE INSERT ON {} FOR EACH ROW "
                               "EXECUTE FUNCTION events_archive_guard()").format(part))
