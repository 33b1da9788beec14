"""Readers holding a snapshot across the archive of their month (storage/archive.py, storage/archive_late.py):
they read the month once, as rows, exactly as before; the partition is truncated only once none is left.

TRUNCATE is not MVCC-safe: a snapshot taken before the archive committed that reached the partition after it saw
the month neither as rows (truncated) nor archived (newer than the snapshot). Here: a READ COMMITTED statement
that takes its snapshot and reads events only after an advisory-lock wait (as a function called by a statement
reads with the statement's snapshot), and REPEATABLE READ transactions (a report over several statements)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.storage.test_archive import AFTER_NOVEMBER, DESCRIBED, SINCE, UNTIL, _plain
from tests.storage.test_operations import DAY, World, build
from usagehub.core.counters import Reading
from usagehub.storage.archive import archive_finished_months
from usagehub.storage.archive_late import settle_archived_months, truncate_emptied
from usagehub.storage.assurance import revenue_assurance
from usagehub.storage.retention_pack import SETTLE
from usagehub.storage.usage import stored_neighbourhoods

GATE = 4525  # the advisory lock the held statement waits for


@pytest.fixture
async def w(pool: AsyncConnectionPool) -> AsyncIterator[World]:
    """The fixture of test_archive.py: two tenants' meters and panels, readings of November."""
    app, tokens, ops = await build(pool)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client:
        yield World(client, tokens, ops)

# A statement's snapshot is taken before it runs; a function it calls reads with that snapshot (STABLE), and
# locks and reads the partition only when it gets there: after the wait.
HELD_READ = """
CREATE FUNCTION pg_temp.held_read(gate bigint) RETURNS TABLE (device_id text, meter text, ts timestamptz,
    event_id text, value numeric) LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM pg_advisory_lock_shared(gate);
    PERFORM pg_advisory_unlock_shared(gate);
    RETURN QUERY SELECT e.device_id, e.meter, e.ts, e.event_id, e.value FROM events_described e
                 ORDER BY e.device_id, e.meter, e.ts, e.event_id;
END $$"""


def _late() -> dict[tuple[str, str], list[Reading]]:
    return {("m1", "energy"): [Reading(ts=DAY + timedelta(hours=h, minutes=30), value=Decimal(1), event_id="x")
                               for h in (-1, 1, 3, 5)],
            ("m2", "energy"): [Reading(ts=DAY + timedelta(hours=2, minutes=1), value=Decimal(1), event_id="x")]}


async def _read(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
    """What the readers of events answer on ``conn`` (its transaction, its snapshot): the view, both tenants'
    assurance, and the neighbours of late readings (the money reader: a late reading's delta)."""
    return {"described": await (await conn.execute(DESCRIBED)).fetchall(),
            "neighbours": await stored_neighbourhoods(conn, _late()),
            "assurance": {t: await revenue_assurance(conn, tenant=t, since=SINCE, until=UNTIL,
                                                     account_id=None, limit=100) for t in ("default", "elsewhere")}}


async def _waiting(pool: AsyncConnectionPool, pid: int) -> bool:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT 1 FROM pg_locks WHERE pid = %s AND NOT granted AND locktype = 'advisory'",
                                 (pid,))
        return await cur.fetchone() is not None


async def test_a_snapshot_taken_before_the_archive_reads_the_month_once(w: World,
                                                                       pool: AsyncConnectionPool) -> None:
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as fresh:
        before = await _read(fresh)
        await fresh.rollback()
    assert len(before["described"]) >= 15 and before["neighbours"][("m1", "energy")]  # something to compare
    connect = psycopg.AsyncConnection.connect
    async with await connect(pool.conninfo) as report, await connect(pool.conninfo) as untouched, \
            await connect(pool.conninfo, autocommit=True) as statement, \
            await connect(pool.conninfo, autocommit=True) as gate:
        for tx in (report, untouched):  # snapshots taken now, before the archive; neither touched events yet
            await tx.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
            await tx.execute("SELECT 1")
        await statement.execute(HELD_READ)
        await gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        held = asyncio.create_task(statement.execute("SELECT * FROM pg_temp.held_read(%s)", (GATE,)))
        for _ in range(200):
            if await _waiting(pool, statement.info.backend_pid):
                break
            await asyncio.sleep(0.05)
        archived = await archive_finished_months(pool, AFTER_NOVEMBER, settle=SETTLE)
        assert archived == (["events_2026_11"] if await _plain(pool) else [])
        await gate.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
        rows = await (await held).fetchall()
        assert [tuple(r) for r in rows] == [tuple(r[:5]) for r in before["described"]]  # the whole month, once
        assert await _read(report) == before
        await report.rollback()
        # the partition is not truncated while a snapshot older than the archive may still read it (untouched's
        # holds no lock on the partition: only its snapshot protects it)…
        assert (await settle_archived_months(pool))[1] == []
        async with pool.connection() as conn:
            assert not await truncate_emptied(conn, date(2026, 11, 1))
        assert await _read(untouched) == before
        await untouched.rollback()
    # …and is, once none is left; every reader answers as before
    assert await settle_archived_months(pool) == ([], ["events_2026_11"] if await _plain(pool) else [])
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as fresh:
        assert await _read(fresh) == before
    if await _plain(pool):
        async with pool.connection() as conn:
            size = await conn.execute("SELECT pg_relation_size('events_2026_11'), emptied_xid IS NULL, "
                                      "truncated_at IS NOT NULL FROM events_archived")
            assert await size.fetchone() == (0, True, True)
