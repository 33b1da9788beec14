"""The archive of finished months (storage/archive.py): the same answers before and after, duplicates stay
duplicates, an interrupted archive leaves the month as it was. Two tenants and a hostile caller."""

from __future__ import annotations

import asyncio
import contextlib
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
from psycopg_pool import AsyncConnectionPool

from tests.storage.test_console_panels import OLDEST, RECENT
from tests.storage.test_neighbourhoods import _expected
from tests.storage.test_operations import DAY, READINGS, World, build
from tests.storage.test_rating_support import feed_readings, reading, wired
from tests.storage.test_sessions_billing import feed
from usagehub import metrics
from usagehub.core.counters import Reading
from usagehub.core.events import MeterKind, UsageEvent
from usagehub.storage.archive import archive_finished_months, archive_month
from usagehub.storage.assurance import revenue_assurance
from usagehub.storage.events import event_key, insert_events
from usagehub.storage.events_direct import DirectInserts
from usagehub.storage.partitions import add_months, create_month, partitioned
from usagehub.storage.retention_pack import SETTLE, pack_daily
from usagehub.storage.usage import stored_neighbourhoods

AFTER_NOVEMBER = datetime(2026, 12, 1, tzinfo=UTC) + SETTLE
DESCRIBED = "SELECT * FROM events_described ORDER BY device_id, meter, ts, event_id"
SINCE, UNTIL = DAY - timedelta(days=3), DAY + timedelta(days=3)
SESSIONS = """query($a: String!) { sessions(accountId: $a) { edges { node { id events(first: 50) { edges { node {
  deviceId meter ts eventId value unit } } } } } } }"""
PAGED = """query($d: String!, $s: DateTime, $u: DateTime, $a: String, $n: Boolean!) { events(deviceId: $d, since: $s,
  until: $u, first: 2, after: $a, newestFirst: $n) { edges { cursor node { ts meter eventId value unit receivedAt } }
  pageInfo { hasNextPage } } }"""


async def _pages(w: World, who: str, device: str, newest_first: bool) -> list[Any]:
    """Every page of a bounded events read (one hour in, the last hour out), following the cursors."""
    pages: list[Any] = []
    after = None
    while len(pages) < 10:
        body = await w.gql(who, PAGED, d=device, s=(DAY + timedelta(hours=1)).isoformat(),
                           u=(DAY + timedelta(hours=4)).isoformat(), a=after, n=newest_first)
        pages.append(body)
        edges = body["data"]["events"]["edges"]
        if not edges or not body["data"]["events"]["pageInfo"]["hasNextPage"]:
            break
        after = edges[-1]["cursor"]
    return pages


@pytest.fixture
async def w(pool: AsyncConnectionPool) -> AsyncIterator[World]:
    """Two tenants' meters (m1: tenant default, m2: tenant elsewhere) and panels, readings of November."""
    app, tokens, ops = await build(pool)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client:
        yield World(client, tokens, ops)


async def _plain(pool: AsyncConnectionPool) -> bool:
    async with pool.connection() as conn:
        return await partitioned(conn)


async def _rows(pool: AsyncConnectionPool, query: str, *params: object) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        return await (await conn.execute(query, params)).fetchall()


async def _answers(w: World, pool: AsyncConnectionPool) -> dict[str, Any]:
    """What each reader of events answers: GraphQL events (each tenant), the view, assurance, neighbours."""
    late = {("m1", "energy"): [Reading(ts=DAY + timedelta(hours=h, minutes=30), value=Decimal(1), event_id="x")
                               for h in (-1, 1, 3, 5)],
            ("m2", "energy"): [Reading(ts=DAY + timedelta(hours=2, minutes=1), value=Decimal(1), event_id="x")]}
    async with pool.connection() as conn:
        near = await stored_neighbourhoods(conn, late)
        assurance = {t: await revenue_assurance(conn, tenant=t, since=SINCE, until=UNTIL, account_id=None, limit=100)
                     for t in ("default", "elsewhere")}
    paged = [await _pages(w, who, d, n) for who, d in (("operator", "m1"), ("b-operator", "m2")) for n in (False, True)]
    assert [len(p) for p in paged] == [2, 2, 2, 2] and paged[0][0]["data"]["events"]["edges"]  # 3 readings, 2 a page
    sessions = [await w.gql(who, SESSIONS, a=a) for who, a in (("billing", "a1"), ("b-billing", "b1"))]
    assert sessions[0]["data"]["sessions"]["edges"][0]["node"]["events"]["edges"]  # a session's events to compare
    return {"graphql": [await w.gql(who, q, d=d) for who, d in (("operator", "m1"), ("b-operator", "m2"))
                        for q in (OLDEST, RECENT)], "paged": paged, "sessions": sessions,
            "described": await _rows(pool, DESCRIBED), "assurance": assurance, "neighbours": near}


async def test_an_archived_month_answers_every_reader_as_before(w: World, pool: AsyncConnectionPool) -> None:
    before = await _answers(w, pool)
    assert len(before["described"]) >= 15 and before["neighbours"][("m1", "energy")]  # something to compare
    assert sum(r.events for r in before["assurance"]["default"]) > 0
    assert await archive_finished_months(pool, AFTER_NOVEMBER - timedelta(days=1), settle=SETTLE) == []  # settling
    archived = await archive_finished_months(pool, AFTER_NOVEMBER, settle=SETTLE)
    if not await _plain(pool):  # TimescaleDB compresses old chunks instead
        assert archived == []
        return
    assert archived == ["events_2026_11"]
    assert await _rows(pool, "SELECT count(*) FROM events_2026_11") == [(0,)]  # the rows moved…
    assert (await _rows(pool, "SELECT count(*), sum(cardinality(ts_us)) FROM events_archive"))[0][1] == len(
        before["described"])  # …every one of them, a row per meter and day
    assert await _rows(pool, "SELECT partition, events FROM events_archived") == [
        ("events_2026_11", len(before["described"]))]
    assert await _answers(w, pool) == before
    await hostile_reads_nothing(w)
    assert await archive_finished_months(pool, AFTER_NOVEMBER, settle=SETTLE) == []  # once


async def hostile_reads_nothing(w: World) -> None:
    """A hostile caller reads nothing of the other tenant's (archived) events, nor its sessions' events."""
    for who, account in (("b-billing", "a1"), ("billing", "b1")):
        assert (await w.gql(who, SESSIONS, a=account))["data"] == {"sessions": {"edges": []}}
    for who, device in (("b-operator", "m1"), ("operator", "m2")):
        assert (await w.gql(who, RECENT, d=device))["data"]["events"]["edges"] == []
        assert (await w.gql(who, OLDEST, d=device))["data"]["events"]["edges"] == []
        assert (await _pages(w, who, device, False))[0]["data"]["events"]["edges"] == []


def _event(device: str, n: int, ts: datetime) -> UsageEvent:
    return UsageEvent(device_id=device, event_id=str(n), meter="energy", ts=ts, value=Decimal(n) / 8, unit="kWh",
                      kind=MeterKind.CUMULATIVE, profile_id="acme-em340", service="electricity",
                      received_at=ts + timedelta(seconds=2), reset_marker=None, text_value=None)


async def test_a_duplicate_of_an_archived_event_is_never_new(w: World, pool: AsyncConnectionPool) -> None:
    usage = "SELECT device_id, sum(quantity) FROM usage_entries GROUP BY 1 ORDER BY 1"
    points = "SELECT account_id, sum(value) FROM session_points GROUP BY 1 ORDER BY 1"
    billed = (await _rows(pool, usage), await _rows(pool, points))
    stored = await _rows(pool, DESCRIBED)
    await archive_finished_months(pool, AFTER_NOVEMBER, settle=SETTLE)
    # the whole stream again through a fresh pipeline (nothing cached): every event is a duplicate
    pipeline, _, _ = wired(pool)
    await feed_readings(pipeline, "m1", READINGS)
    await feed_readings(pipeline, "m2", READINGS)
    assert (await _rows(pool, usage), await _rows(pool, points)) == billed
    assert await _rows(pool, DESCRIBED) == stored
    # both inserts, directly: the archived identities are not new, a late new one is (and is stored once)
    old = [_event("m1", i, ts) for i, (ts, _) in enumerate(READINGS)]
    assert {event_key(e) for e in old} <= {(r[0], r[1], r[2], r[3]) for r in stored}
    new = _event("m1", 99, DAY + timedelta(minutes=7))
    fallbacks = metrics.EVENT_INSERT_FALLBACKS._value.get()
    async with pool.connection() as conn, conn.transaction():
        assert await DirectInserts().insert(conn, [*old, new]) == {event_key(new)}
    if await _plain(pool):  # the replacement partition refused the archived identities to the COPY
        assert metrics.EVENT_INSERT_FALLBACKS._value.get() == fallbacks + 1
    async with pool.connection() as conn, conn.transaction():
        assert await insert_events(conn, [*old, new]) == set()
    async with pool.connection() as conn, conn.transaction():
        assert await DirectInserts().insert(conn, [new, *old]) == set()
    assert len(await _rows(pool, DESCRIBED)) == len(stored) + 1


async def test_a_late_reading_of_an_archived_month_is_billed_between_its_archived_neighbours(
        w: World, pool: AsyncConnectionPool) -> None:
    usage = "SELECT sum(quantity), count(*) FROM usage_entries WHERE device_id = 'm1'"
    await archive_finished_months(pool, AFTER_NOVEMBER, settle=SETTLE)
    pipeline, _, _ = wired(pool)
    total = (await _rows(pool, usage))[0][0]
    # between the readings at +1 h (1500 Wh) and +2 h (2000 Wh): the hour splits, the total stays
    await feed(pipeline, [reading("m1", 50, DAY + timedelta(hours=1, minutes=30), 1700)])
    got = await _rows(pool, usage)
    assert got[0][0] == total == Decimal("2")
    assert await _rows(pool, "SELECT count(*) FROM events_all WHERE device_id = 'm1' AND event_id = '50'") == [(1,)]
    if await _plain(pool):  # stored as a row of the archived month's new partition
        assert await _rows(pool, "SELECT count(*) FROM events_2026_11") == [(1,)]


async def held_at_last_statement(holder: psycopg.AsyncConnection[Any], pid: int, statement: str) -> None:
    """Wait until backend ``pid`` waits for ``holder``'s transaction (which wrote or locked what ``statement``,
    the last statement of an archive or a fold, writes)."""
    waited = None
    for _ in range(200):
        cur = await holder.execute("SELECT string_agg(locktype, ', ') FROM pg_locks WHERE pid = %s AND NOT granted",
                                   (pid,))
        waited = (await cur.fetchone() or [None])[0]
        if waited:
            break
        await asyncio.sleep(0.05)
    assert waited == "transactionid", (statement, waited)


async def _record_november(holder: psycopg.AsyncConnection[Any]) -> None:
    """In ``holder``'s open transaction, the row archive_month writes last: archive_month waits for it there."""
    await holder.execute("INSERT INTO events_archived (partition, month_start, month_end, events, rows, bytes_before, "
                         "bytes_after) VALUES ('events_2026_11', '2026-11-01Z', '2026-12-01Z', 0, 0, 0, 0)")


async def test_an_interrupted_archive_leaves_the_month_as_it_was(w: World, pool: AsyncConnectionPool) -> None:
    if not await _plain(pool):
        assert await archive_finished_months(pool, AFTER_NOVEMBER, settle=SETTLE) == []
        return
    before = await _answers(w, pool)
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as holder:
        await _record_november(holder)
        async with pool.connection() as conn:
            pid = conn.info.backend_pid
            task = asyncio.create_task(archive_month(conn, date(2026, 11, 1), lock_timeout_ms=60_000))
            # the archive copied the rows and deleted them from the partition, and waits to record the month…
            await held_at_last_statement(holder, pid, "INSERT INTO events_archived")
            assert (await (await holder.execute("SELECT count(*) FROM events_archive")).fetchone() or [1])[0] == 0
            # …and the hub stops there: its connection ends
            await holder.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(Exception):  # noqa: B017 — the connection is gone, however psycopg reports it
                await task
        await holder.rollback()
    assert await _rows(pool, "SELECT count(*) FROM events_archive") == [(0,)]
    assert await _rows(pool, "SELECT count(*) FROM events_archived") == [(0,)]
    assert await _rows(pool, "SELECT count(*) FROM events_2026_11") == [(len(before["described"]),)]
    assert await _answers(w, pool) == before  # nothing lost, nothing doubled
    assert await archive_finished_months(pool, AFTER_NOVEMBER, settle=SETTLE) == ["events_2026_11"]
    assert await _answers(w, pool) == before


async def test_ingest_into_other_months_goes_on_while_a_month_is_archived(w: World,
                                                                          pool: AsyncConnectionPool) -> None:
    if not await _plain(pool):
        return
    async with pool.connection() as conn:
        await create_month(conn, date(2026, 12, 1), lock_timeout_ms=5000)
    current = _event("m1", 501, datetime(2026, 12, 3, 10, tzinfo=UTC))
    late = _event("m1", 502, DAY + timedelta(minutes=11))  # a new identity in the month being archived
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as holder:
        await _record_november(holder)  # the archive copies and deletes the rows, then waits (partition locked)
        async with pool.connection() as conn:
            pid = conn.info.backend_pid
            task = asyncio.create_task(archive_month(conn, date(2026, 11, 1), lock_timeout_ms=60_000))
            await held_at_last_statement(holder, pid, "INSERT INTO events_archived")
            async with pool.connection() as ingest, ingest.transaction():
                await ingest.execute("SET LOCAL lock_timeout = '2s'")
                assert await DirectInserts().insert(ingest, [current]) == {event_key(current)}  # no wait
            with pytest.raises(psycopg.errors.LockNotAvailable):  # a row of the month itself waits
                async with pool.connection() as ingest, ingest.transaction():
                    await ingest.execute("SET LOCAL lock_timeout = '300ms'")
                    await insert_events(ingest, [late])
            await holder.rollback()
            assert await task
    async with pool.connection() as conn, conn.transaction():
        assert await DirectInserts().insert(conn, [late]) == {event_key(late)}  # after it, a late row is stored
    keys = {(r[0], r[1], r[2], r[3]) for r in await _rows(pool, DESCRIBED)}
    assert {event_key(current), event_key(late)} <= keys


_months = itertools.count()
layouts = st.sets(st.tuples(st.integers(0, 40), st.sampled_from(["a", "b"])), max_size=30)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(archived=layouts, rows=layouts, batch_slots=layouts)
async def test_neighbours_across_archived_days_and_late_rows_are_the_nearest(
        pool: AsyncConnectionPool, archived: set[tuple[int, str]], rows: set[tuple[int, str]],
        batch_slots: set[tuple[int, str]]) -> None:
    """Readings 3 h apart over five days: some archived, some stored later as rows of the archived month,
    and a batch: each late reading gets its nearest stored reading on either side, wherever it is kept."""
    month = add_months(date(2031, 1, 1), next(_months))
    t0 = datetime(month.year, month.month, 1, 22, tzinfo=UTC)  # across UTC midnights

    def at(slot: int, event_id: str) -> Reading:
        return Reading(ts=t0 + timedelta(hours=3 * slot), value=Decimal(slot), event_id=f"{slot:03d}{event_id}")

    insert = ("INSERT INTO events (device_id, meter, ts, event_id, value, meta_id, received_at) VALUES "
              "('nb', 'energy', %s, %s, %s, event_meta_id('kWh', 'cumulative', 'p', 'electricity'), %s)")
    first = sorted((at(*s) for s in archived - batch_slots), key=lambda r: r.key)
    later = sorted((at(*s) for s in rows - archived - batch_slots), key=lambda r: r.key)
    batch = sorted((at(*s) for s in batch_slots), key=lambda r: r.key)
    async with pool.connection() as conn:
        await conn.execute("SELECT ensure_event_partition(%s)", (month,))
        for r in first:
            await conn.execute(insert, (r.ts, r.event_id, r.value, r.ts))
        if first:
            assert await archive_month(conn, month) == await partitioned(conn)
        async with conn.transaction():
            for r in later + batch:
                await conn.execute(insert, (r.ts, r.event_id, r.value, r.ts))
            got = await stored_neighbourhoods(conn, {("nb", "energy"): batch} if batch else {})
            await conn.execute("DELETE FROM events WHERE device_id = 'nb'")
            await conn.execute("DELETE FROM events_archive WHERE device_id = 'nb'")
    stored = sorted(first + later, key=lambda r: r.key)
    assert [r.key for r in got.get(("nb", "energy"), [])] == (_expected(stored, batch, None) if batch else [])
    assert all(r.value == Decimal(int(r.event_id[:3])) for r in got.get(("nb", "energy"), []))


async def test_the_housekeeping_loop_archives_finished_months_after_its_first_pause(pool: AsyncConnectionPool) -> None:
    """pack_daily (the hub's task) packs at start and archives (and truncates) from its second round (here after
    0.2 s)."""
    month = date(2025, 3, 1)  # a month over by the real clock
    async with pool.connection() as conn:
        await conn.execute("SELECT ensure_event_partition(%s)", (month,))
        await conn.execute("INSERT INTO events (device_id, meter, ts, event_id, value, meta_id, received_at) "
                           "VALUES ('hk', 'energy', '2025-03-05', '1', 1, "
                           "event_meta_id('kWh', 'cumulative', 'p', 'electricity'), now())")
    task = asyncio.create_task(pack_daily(pool, first_archive_s=0.2))
    try:
        archived: list[tuple[Any, ...]] = []
        for _ in range(100):
            await asyncio.sleep(0.05)
            archived = await _rows(pool, "SELECT partition, truncated_at IS NOT NULL FROM events_archived")
            if archived and archived[0][1]:
                break
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # archived, then truncated in the same round (no snapshot older than the archive's DELETE was left)
    assert archived == ([("events_2025_03", True)] if await _plain(pool) else [])
    assert await _rows(pool, "SELECT count(*) FROM events_all WHERE device_id = 'hk'") == [(1,)]
