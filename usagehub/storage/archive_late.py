"""The archive's later round: fold late rows of archived months in, give emptied partitions' space back.

``storage/archive.py`` empties an archived month's partition by DELETE (MVCC-safe) and leaves it for late rows
of that month. Each housekeeping round then, per archived month:

* **folds its late rows** into the archive (``fold_late_rows``): merged into the day's row of the meter, or a
  new row for a day that has none, arrays in key order; an identity already archived is kept as archived and
  its late duplicate dropped (never doubled). One transaction under the partition's EXCLUSIVE lock (writers of
  that month wait, readers go on): a pass stopped midway leaves everything as it was, and folded rows are
  deleted by it, so nothing is folded twice. A snapshot older than the fold reads the rows and the old day
  rows; a newer one the merged day rows.
* **truncates the partition** (``truncate_emptied``) once it holds no live row (checked under its EXCLUSIVE
  lock: writers wait, readers go on) and no snapshot older than the last DELETE (archive or fold) can exist
  (the ``backend_xmin`` of every backend of the database, ``pg_stat_activity``; a backend whose xmin this role
  may not read counts as older), then takes its ACCESS EXCLUSIVE lock, with a timeout. Until then the deleted
  rows keep their space (heap and indexes).
"""

from __future__ import annotations

import logging
from datetime import date

from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from usagehub.errors import StorageError
from usagehub.storage.partitions import existing_months, partitioned
from usagehub.storage.pool import Connection, mapped_errors

log = logging.getLogger(__name__)

TRUNCATE_WAIT_MS = 500  # the longest the round waits for the partition's ACCESS EXCLUSIVE lock
_COLUMNS = "t, event_id, value, meta_id, r, g, reset_marker, text_value"
_MERGE = """
WITH late AS (
    SELECT device_id, meter, events_archive_day(ts) AS day, events_archive_us(ts) AS t, event_id, value, meta_id,
           (extract(epoch FROM received_at - ts) * 1000000)::bigint AS r,
           (extract(epoch FROM ingested_at - received_at) * 1000000)::bigint AS g, reset_marker, text_value,
           1 AS late
    FROM {part}),
merged AS (
    SELECT a.device_id, a.meter, a.day, {u}, 0 AS late
    FROM events_archive a
    CROSS JOIN LATERAL unnest(a.ts_us, a.event_id, a.value, a.meta_id, a.received_us, a.ingested_us,
                              a.reset_marker, a.text_value) AS u({c})
    WHERE (a.device_id, a.meter, a.day) IN (SELECT device_id, meter, day FROM late)
    UNION ALL SELECT * FROM late),
kept AS (  -- an identity archived already stays as archived: its late duplicate is dropped
    SELECT DISTINCT ON (device_id, meter, day, t, event_id) * FROM merged
    ORDER BY device_id, meter, day, t, event_id, late)
INSERT INTO events_archive (device_id, meter, day, ts_us, event_id, value, meta_id, received_us, ingested_us,
                            reset_marker, text_value)
SELECT device_id, meter, day, array_agg(t {o}), array_agg(event_id {o}), array_agg(value {o}),
       array_agg(meta_id {o}), array_agg(r {o}), array_agg(g {o}),
       CASE WHEN bool_or(reset_marker IS NOT NULL) THEN array_agg(reset_marker {o}) END,
       CASE WHEN bool_or(text_value IS NOT NULL) THEN array_agg(text_value {o}) END
FROM kept GROUP BY device_id, meter, day
ON CONFLICT (device_id, meter, day) DO UPDATE SET
    ts_us = EXCLUDED.ts_us, event_id = EXCLUDED.event_id, value = EXCLUDED.value, meta_id = EXCLUDED.meta_id,
    received_us = EXCLUDED.received_us, ingested_us = EXCLUDED.ingested_us,
    reset_marker = EXCLUDED.reset_marker, text_value = EXCLUDED.text_value
""".replace("{o}", "ORDER BY t, event_id").replace("{c}", _COLUMNS).replace(
    "{u}", ", ".join(f"u.{c}" for c in _COLUMNS.split(", ")))

# Backends of this database whose snapshot may predate transaction %(x)s (a full xid): backend_xmin <= x, its full
# value being our own xid minus its age (exact: a live xmin is less than 2^31 xids old). A backend whose xmin
# this role may not read counts as one.
_OLDER_SNAPSHOTS = """
SELECT count(*) FROM pg_stat_activity
WHERE pid <> pg_backend_pid() AND datid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND (backend_xmin IS NULL AND query = '<insufficient privilege>'
       OR backend_xmin IS NOT NULL AND %(own)s - age(backend_xmin) <= %(x)s)
"""


def _partition(month: date) -> str:
    return f"events_{month:%Y_%m}"


async def settle_archived_months(pool: AsyncConnectionPool, *,
                                 lock_timeout_ms: int = 2000) -> tuple[list[str], list[str]]:
    """Fold late rows of every archived month, then truncate the emptied partitions it can; what it did.

    A month whose lock is not granted in time is left for the next round (logged), the others go on.
    """
    async with mapped_errors(), pool.connection() as conn:
        if not await partitioned(conn):
            return [], []
        cur = await conn.execute("SELECT partition FROM events_archived ORDER BY month_start")
        archived = {str(r[0]) for r in await cur.fetchall()}
        months = sorted(m for m in await existing_months(conn) if _partition(m) in archived)
    folded: list[str] = []
    truncated: list[str] = []
    for month in months:
        try:
            async with mapped_errors(), pool.connection() as conn:
                if await fold_late_rows(conn, month, lock_timeout_ms=lock_timeout_ms):
                    folded.append(_partition(month))
                # While the TRUNCATE's lock request waits, every new statement on the partition (any read of
                # events not pruned at plan time) queues behind it: a short wait, the next round tries again.
                if await truncate_emptied(conn, month, lock_timeout_ms=min(lock_timeout_ms, TRUNCATE_WAIT_MS)):
                    truncated.append(_partition(month))
        except StorageError as err:  # a lock not granted in time, most often: the next round tries again
            log.warning("archived event partition %s not settled this round: %s", _partition(month), err)
    return folded, truncated


async def fold_late_rows(conn: Connection, month: date, *, lock_timeout_ms: int = 2000) -> int:
    """Fold the rows of an archived ``month``'s partition into the archive and delete them; how many (0: none)."""
    name = _partition(month)
    part = sql.Identifier(name)
    async with conn.transaction():
        await conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout_ms)}ms",))
        await conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(part))  # writers of the month wait
        if await (await conn.execute("SELECT 1 FROM events_archived WHERE partition = %s", (name,))).fetchone() \
                is None:
            return 0
        late = int(str((await (await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(part))).fetchone()
                        or [0])[0]))
        if late == 0:
            return 0
        days = (await conn.execute(sql.SQL(_MERGE).format(part=part))).rowcount
        deleted = (await conn.execute(sql.SQL("DELETE FROM {}").format(part))).rowcount
        if deleted != late:  # the partition is locked against writers: never, but never lose a row silently
            raise StorageError(f"{name}: {deleted} late rows deleted, {late} folded")
        await conn.execute("UPDATE events_archived SET late_events = late_events + %s, "
                           "emptied_xid = pg_current_xact_id() WHERE partition = %s", (late, name))
    log.info("event partition %s: %d late events folded into %d archived days", name, late, days)
    return late


async def truncate_emptied(conn: Connection, month: date, *, lock_timeout_ms: int = 2000) -> bool:
    """TRUNCATE an archived ``month``'s partition if rows were deleted from it, it holds no live row and no
    snapshot older than the last DELETE can exist; whether it did."""
    name = _partition(month)
    part = sql.Identifier(name)
    pending = "SELECT emptied_xid::text::bigint FROM events_archived WHERE partition = %s"
    if ((await (await conn.execute(pending, (name,))).fetchone()) or [None])[0] is None:
        return False  # nothing deleted since the last TRUNCATE (no lock taken)
    async with conn.transaction():
        # Our xid first: age() below counts from it (else from the next xid, which others may take meanwhile).
        own = int(str((await (await conn.execute("SELECT pg_current_xact_id()::text::bigint")).fetchone()
                       or [0])[0]))
        await conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout_ms)}ms",))
        # EXCLUSIVE first: no row can enter from here on, and readers go on while the deleted rows are scanned.
        await conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(part))
        emptied = ((await (await conn.execute(pending, (name,))).fetchone()) or [None])[0]
        if emptied is None:
            return False
        if await (await conn.execute(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(part))).fetchone() is not None:
            return False  # late rows, committed: folded first, by the next round
        # Any time after the DELETE committed will do: a snapshot taken after this check is newer than it.
        older = await (await conn.execute(_OLDER_SNAPSHOTS, {"own": own, "x": int(str(emptied))})).fetchone()
        if older is None or int(str(older[0])) > 0:
            return False
        # TRUNCATE's lock, asked explicitly under the timeout: readers of the partition are waited for, and new
        # statements on it queue behind the request meanwhile.
        await conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(part))
        await conn.execute(sql.SQL("TRUNCATE {}").format(part))
        await conn.execute("UPDATE events_archived SET emptied_xid = NULL, truncated_at = now() WHERE partition = %s",
                           (name,))
    log.info("event partition %s truncated: no snapshot older than its last DELETE", name)
    return True
