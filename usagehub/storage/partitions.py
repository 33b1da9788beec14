"""Monthly event partitions, created ahead of time and off the ingest transaction, never waiting long for a lock.

A partition is created as a plain table and then attached: ``ATTACH PARTITION``
takes only SHARE UPDATE EXCLUSIVE on ``events`` (``CREATE TABLE … PARTITION OF``
takes ACCESS EXCLUSIVE, which an idle reader's ACCESS SHARE blocks forever).
Every attempt runs under ``lock_timeout``: when a lock is not granted in time
the attempt gives up, is counted, and is retried later. Until a month has its
partition, its rows land in the default partition; identity stays exact
because the key includes ``ts``, so one event always maps to one partition.
A month whose rows already sit in the default partition keeps them there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import UTC, date, datetime

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from usagehub import metrics
from usagehub.storage.pool import Connection

log = logging.getLogger(__name__)

_ADVISORY_KEY = 7_311_002  # the key ensure_event_partition() uses: one partition maker at a time


def month_of(ts: datetime) -> date:
    """The first day of the UTC month ``ts`` falls in."""
    if ts.tzinfo is not UTC:  # events carry UTC: the common case takes no conversion
        ts = ts.astimezone(UTC)
    return date(ts.year, ts.month, 1)


def add_months(month: date, n: int) -> date:
    """``month`` moved by ``n`` months (first of month in, first of month out)."""
    index = month.year * 12 + month.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


async def partitioned(conn: Connection) -> bool:
    """Whether ``events`` is natively partitioned (a TimescaleDB hypertable makes its own chunks)."""
    cur = await conn.execute("SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
                             "WHERE c.relname = 'events' AND c.relnamespace = 'public'::regnamespace")
    return await cur.fetchone() is not None


async def existing_months(conn: Connection) -> set[date]:
    """Months that already have their own partition."""
    cur = await conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'events'::regclass AND c.relname ~ '^events_[0-9]{4}_[0-9]{2}$'")
    return {date(int(r[0][7:11]), int(r[0][12:14]), 1) for r in await cur.fetchall()}  # type: ignore[index]


async def create_month(conn: Connection, month: date, *, lock_timeout_ms: int) -> bool:
    """Create and attach the partition of ``month``; False when a lock was not granted in time (counted, logged).

    True also when the month's rows already sit in the default partition: the month is settled.
    """
    name = f"events_{month:%Y_%m}"
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    end = datetime.combine(add_months(month, 1), datetime.min.time(), UTC)
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout_ms)}ms",))
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_KEY,))
            if month in await existing_months(conn):
                return True
            # DDL takes no bind parameters: names and bounds are composed as quoted SQL.
            await conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (LIKE events INCLUDING DEFAULTS)")
                               .format(sql.Identifier(name)))
            await conn.execute(sql.SQL("ALTER TABLE events ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})")
                               .format(sql.Identifier(name), sql.Literal(start), sql.Literal(end)))
    except psycopg.errors.LockNotAvailable:
        metrics.LOCK_TIMEOUTS.labels("partition").inc()
        log.warning("partition %s not created: a lock was not granted within %d ms (a long transaction "
                    "holds it); retrying later", name, lock_timeout_ms)
        return False
    except psycopg.errors.CheckViolation:
        # Rows of this month already sit in the default partition: they stay there (answers are the same).
        log.info("partition %s not created: its rows are in the default partition and stay there", name)
        return True
    metrics.PARTITIONS_CREATED.inc()
    log.info("created event partition %s", name)
    return True


class Partitions:
    """Which months have partitions; creates missing ones outside any batch transaction."""

    def __init__(self, pool: AsyncConnectionPool, *, ingest_lock_timeout_ms: int = 200,
                 ahead_lock_timeout_ms: int = 2000) -> None:
        self.pool = pool
        self.ingest_lock_timeout_ms = ingest_lock_timeout_ms
        self.ahead_lock_timeout_ms = ahead_lock_timeout_ms
        self._known: set[date] = set()
        self._tried: set[date] = set()  # tried on the ingest path and given up: the maker retries them
        self._native: bool | None = None

    async def _load(self, conn: Connection) -> bool:
        if self._native is None:
            self._native = await partitioned(conn)
            if self._native:
                self._known |= await existing_months(conn)
        return self._native

    async def ensure_for(self, timestamps: Iterable[datetime]) -> None:
        """Before a batch: one quick try per new month (short lock timeout); never blocks ingest."""
        months = {month_of(ts) for ts in set(timestamps)} - self._known - self._tried  # a message's readings share one
        if not months:
            return
        async with self.pool.connection() as conn:
            if not await self._load(conn):
                return
            for month in sorted(months - self._known):
                if await create_month(conn, month, lock_timeout_ms=self.ingest_lock_timeout_ms):
                    self._known.add(month)
                else:
                    self._tried.add(month)  # its rows go to the default partition meanwhile

    async def ahead(self, now: datetime, months_ahead: int = 2) -> bool:
        """Create this month's and the next ``months_ahead`` months' partitions; True when all exist."""
        wanted = {add_months(month_of(now), n) for n in range(months_ahead + 1)}
        async with self.pool.connection() as conn:
            if not await self._load(conn):
                return True
            self._known |= await existing_months(conn)
            for month in sorted(wanted - self._known):
                if await create_month(conn, month, lock_timeout_ms=self.ahead_lock_timeout_ms):
                    self._known.add(month)
        return wanted <= self._known

    async def run(self, *, every_s: float = 3600.0, retry_s: float = 15.0, months_ahead: int = 2) -> None:
        """Keep partitions ahead of time until cancelled (retries sooner after a lock timeout or an outage)."""
        while True:
            try:
                done = await self.ahead(datetime.now(UTC), months_ahead)
            except (psycopg.Error, OSError) as err:
                log.warning("partition maker: %s; retrying in %.0fs", err, retry_s)
                done = False
            await asyncio.sleep(every_s if done else retry_s)
