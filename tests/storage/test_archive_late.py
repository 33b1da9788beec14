"""Late rows of an archived month folded into the archive (storage/archive_late.py): merged into the day's row
in key order, a day without one gets one, an archived identity is never doubled, exactly once, and a pass
stopped midway leaves everything as it was. Every reader answers the same; two tenants and a hostile caller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.storage.test_archive import (
    AFTER_NOVEMBER,
    _answers,
    _plain,
    _rows,
    held_at_last_statement,
    hostile_reads_nothing,
)
from tests.storage.test_operations import DAY, World, build
from tests.storage.test_rating_support import reading, wired
from tests.storage.test_sessions_billing import feed
from usagehub.storage.archive import archive_finished_months
from usagehub.storage.archive_late import fold_late_rows, settle_archived_months
from usagehub.storage.retention_pack import SETTLE

NOVEMBER = date(2026, 11, 1)
ARCHIVE = "SELECT device_id, meter, day, ts_us, event_id, value FROM events_archive ORDER BY device_id, meter, day"


@pytest.fixture
async def w(pool: AsyncConnectionPool) -> AsyncIterator[World]:
    """The fixture of test_archive.py: two tenants' meters and panels, readings of November."""
    app, tokens, ops = await build(pool)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client:
        yield World(client, tokens, ops)


async def _late_rows(pool: AsyncConnectionPool) -> None:
    """Archive November, then late readings through the pipeline: m1 within an archived day (between the
    readings at +3 h and +4 h: it becomes a neighbour), m2 (the other tenant) on a day with no archive row."""
    assert await archive_finished_months(pool, AFTER_NOVEMBER, settle=SETTLE) == ["events_2026_11"]
    pipeline, _, _ = wired(pool)
    await feed(pipeline, [reading("m1", 60, DAY + timedelta(hours=3, minutes=45), 2800),
                          reading("m2", 61, DAY + timedelta(days=1, hours=5), 3300)])
    assert await _rows(pool, "SELECT device_id, event_id FROM events_2026_11 ORDER BY 1") == [
        ("m1", "60"), ("m2", "61")]


async def _duplicate(pool: AsyncConnectionPool) -> None:
    """A late duplicate of an archived event that slipped past the guard trigger (a race of the staged insert
    could let one in): a second copy of m1's first reading, with another arrival time."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("ALTER TABLE events_2026_11 DISABLE TRIGGER events_archive_guard")
        await conn.execute(
            "INSERT INTO events_2026_11 (device_id, meter, ts, event_id, value, meta_id, received_at) "
            "SELECT device_id, meter, ts, event_id, value, meta_id, received_at + interval '1 day' FROM events_all "
            "WHERE device_id = 'm1' AND meter = 'energy' ORDER BY ts LIMIT 1")
        await conn.execute("ALTER TABLE events_2026_11 ENABLE TRIGGER events_archive_guard")


async def test_late_rows_of_an_archived_month_are_folded_once(w: World, pool: AsyncConnectionPool) -> None:
    if not await _plain(pool):  # TimescaleDB: nothing archived, nothing to fold
        assert await settle_archived_months(pool) == ([], [])
        return
    await _late_rows(pool)
    before = await _answers(w, pool)
    assert (DAY + timedelta(hours=3, minutes=45)) in [r.ts for r in before["neighbours"][("m1", "energy")]]
    days = await _rows(pool, "SELECT device_id, day FROM events_archive ORDER BY 1, 2")
    await _duplicate(pool)
    assert await settle_archived_months(pool) == (["events_2026_11"], ["events_2026_11"])
    assert await _rows(pool, "SELECT count(*) FROM events_2026_11") == [(0,)]
    archive = await _rows(pool, ARCHIVE)
    # m2's new day has a row of its own; every day row is in key order, each identity once
    assert [(r[0], r[2]) for r in archive] == sorted([*days, ("m2", (DAY + timedelta(days=1)).date())])
    for row in archive:
        keys = list(zip(row[3], row[4], strict=True))
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert await _rows(pool, "SELECT late_events, emptied_xid IS NULL FROM events_archived") == [(3, True)]
    assert await _answers(w, pool) == before  # the duplicate is gone, the late readings kept
    await hostile_reads_nothing(w)
    assert await settle_archived_months(pool) == ([], [])  # once
    assert await _rows(pool, ARCHIVE) == archive


async def test_an_interrupted_fold_leaves_everything_as_it_was(w: World, pool: AsyncConnectionPool) -> None:
    if not await _plain(pool):
        return
    await _late_rows(pool)
    before = await _answers(w, pool)
    archive = await _rows(pool, ARCHIVE)
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as holder:
        # the fold's last statement records it on the month's row: held there, after the merge and the delete…
        await holder.execute("SELECT 1 FROM events_archived WHERE partition = 'events_2026_11' FOR UPDATE")
        async with pool.connection() as conn:
            pid = conn.info.backend_pid
            task = asyncio.create_task(fold_late_rows(conn, NOVEMBER, lock_timeout_ms=60_000))
            await held_at_last_statement(holder, pid, "UPDATE events_archived")
            # …and the hub stops there: its connection ends
            await holder.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(Exception):  # noqa: B017 — the connection is gone, however psycopg reports it
                await task
        await holder.rollback()
    assert await _rows(pool, ARCHIVE) == archive
    assert await _rows(pool, "SELECT count(*) FROM events_2026_11") == [(2,)]
    assert await _answers(w, pool) == before
    assert await settle_archived_months(pool) == (["events_2026_11"], ["events_2026_11"])
    assert await _answers(w, pool) == before


async def test_a_fold_waits_for_nobody_but_writers_of_its_month(w: World, pool: AsyncConnectionPool) -> None:
    """A reader holding the partition does not stop the fold; it stops the truncate, tried again next round."""
    if not await _plain(pool):
        return
    await _late_rows(pool)
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as reader:
        await reader.execute("SELECT count(*) FROM events_2026_11")  # holds the partition (ACCESS SHARE)
        assert await settle_archived_months(pool, lock_timeout_ms=200) == (["events_2026_11"], [])
        got: list[Any] = await (await reader.execute("SELECT count(*) FROM events_all WHERE day < '2026-12-01'"
                                                     )).fetchall()
        await reader.rollback()
    assert await _rows(pool, "SELECT count(*) FROM events_all WHERE day < '2026-12-01'") == got
    assert await settle_archived_months(pool) == ([], ["events_2026_11"])
