"""Late rows of an archived month folded into the archive (storage/archive_late.py): merged into the day's row
in key order, a day without one gets one, an archived identity is never doubled, exactly once, and a pass
stopped midway leaves everything as it was. Every reader answers the same; two tenants and a hostile caller."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from tests.storage.test_archive import (
    AFTER_NOVEMBER,
    _answers,
    _plain,
    _rows,
    held_at_last_statement,
    hostile_reads_nothing,
)
from tests.storage.test_neighbourhoods import _expected
from tests.storage.test_operations import DAY, World, build
from tests.storage.test_rating_support import reading, wired
from tests.storage.test_sessions_billing import feed
from usagehub.core.counters import Reading
from usagehub.storage.archive import archive_finished_months, archive_month
from usagehub.storage.archive_late import fold_late_rows, settle_archived_months
from usagehub.storage.partitions import add_months, partitioned
from usagehub.storage.retention_pack import SETTLE
from usagehub.storage.usage import stored_neighbourhoods

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


_months = itertools.count()
slots = st.sets(st.tuples(st.integers(0, 40), st.sampled_from(["a", "b"])), max_size=30)
_INSERT = ("INSERT INTO events (device_id, meter, ts, event_id, value, meta_id, received_at) VALUES "
           "('nf', 'energy', %s, %s, %s, event_meta_id('kWh', 'cumulative', 'p', 'electricity'), %s)")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(archived=slots, late=slots, batch_slots=slots)
async def test_a_fold_keeps_each_identity_once_in_key_order_and_every_neighbour(
        pool: AsyncConnectionPool, archived: set[tuple[int, str]], late: set[tuple[int, str]],
        batch_slots: set[tuple[int, str]]) -> None:
    """Readings 3 h apart over five days: some archived, then late rows of the archived month, some of them
    duplicates of archived identities with another value (slipped past the guard trigger). After the fold each
    day's arrays hold each identity once in key order, the archived copy wins, and a batch's neighbours are the
    nearest stored readings, wherever they were kept."""
    month = add_months(date(2041, 1, 1), next(_months))
    t0 = datetime(month.year, month.month, 1, 22, tzinfo=UTC)  # across UTC midnights

    def at(slot: int, event_id: str, value: int | None = None) -> Reading:
        return Reading(ts=t0 + timedelta(hours=3 * slot), value=Decimal(slot if value is None else value),
                       event_id=f"{slot:03d}{event_id}")

    first = sorted((at(*s) for s in archived - batch_slots), key=lambda r: r.key)
    async with pool.connection() as conn:
        if not await partitioned(conn):
            return
        try:
            new, got, batch = await _fold_and_probe(conn, month, at, first, archived, late, batch_slots)
        finally:  # the next example starts from nothing stored
            await conn.execute("DELETE FROM events WHERE device_id = 'nf'")
            await conn.execute("DELETE FROM events_archive WHERE device_id = 'nf'")
    if not first:
        return
    stored = sorted(first + new, key=lambda r: r.key)
    assert [r.key for r in got.get(("nf", "energy"), [])] == (_expected(stored, batch, None) if batch else [])


async def _fold_and_probe(conn: Any, month: date, at: Any, first: list[Reading], archived: set[tuple[int, str]],
                          late: set[tuple[int, str]], batch_slots: set[tuple[int, str]]
                          ) -> tuple[list[Reading], dict[Any, list[Reading]], list[Reading]]:
    """Archive ``first``, store the late rows (new ones and duplicates), fold, check the day rows; then the
    neighbours of the batch (stored in a transaction rolled back)."""
    await conn.execute("SELECT ensure_event_partition(%s)", (month,))
    for r in first:
        await conn.execute(_INSERT, (r.ts, r.event_id, r.value, r.ts))
    if not first:
        return [], {}, []
    assert await archive_month(conn, month)
    new = [at(*s) for s in late - archived - batch_slots]
    dups = [at(*s, value=999) for s in late & (archived - batch_slots)]
    async with conn.transaction():
        await conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER events_archive_guard").format(
            sql.Identifier(f"events_{month:%Y_%m}")))
        for r in new + dups:
            await conn.execute(_INSERT, (r.ts, r.event_id, r.value, r.ts))
        await conn.execute(sql.SQL("ALTER TABLE {} ENABLE TRIGGER events_archive_guard").format(
            sql.Identifier(f"events_{month:%Y_%m}")))
    assert await fold_late_rows(conn, month) == len(new) + len(dups)
    cur = await conn.execute("SELECT day, ts_us, event_id, value FROM events_archive WHERE device_id = 'nf' "
                             "AND day >= %s AND day < %s ORDER BY day", (month, add_months(month, 1)))
    days = await cur.fetchall()
    kept = [(d, *k) for d, ts_us, ids, _ in days for k in zip(ts_us, ids, strict=True)]
    for _, ts_us, ids, _ in days:
        assert list(zip(ts_us, ids, strict=True)) == sorted(zip(ts_us, ids, strict=True))
    assert len(kept) == len(set(kept)) == len(first) + len(new)
    assert all(v == Decimal(int(i[:3])) for _, _, eids, vals in days for i, v in zip(eids, vals, strict=True))
    batch = sorted((at(*s) for s in batch_slots), key=lambda r: r.key)
    async with conn.transaction():
        for r in batch:
            await conn.execute(_INSERT, (r.ts, r.event_id, r.value, r.ts))
        got = await stored_neighbourhoods(conn, {("nf", "energy"): batch} if batch else {})
        raise psycopg.Rollback()
    return new, got, batch
