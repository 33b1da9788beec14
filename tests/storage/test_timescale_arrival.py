"""Arrival times to the millisecond (migration 0047): recorded so on both storages, exact through compressed chunks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from msgspec.structs import replace
from psycopg_pool import AsyncConnectionPool

from tests.conftest import _with_db, drop_database
from tests.storage import test_sessions_billing as sessions_billing
from tests.storage import timescale_stream
from tests.storage.migrate_before import migrate_before
from tests.storage.test_timescale import _rows
from tests.storage.test_timescale_compact import DESCRIBED, _compress_compact, _event, _store, _stream
from tests.storage.timescale_stream import answers, play
from usagehub.storage.events import arrival_ms, event_key
from usagehub.storage.events_direct import DirectInserts
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import open_pool

T0 = datetime(2026, 6, 1, tzinfo=UTC)
FORMS = "SELECT count(received_ms), count(ingested_ms), count(received_at), count(ingested_at) FROM events"
# Another writer (a tool, a row stored before 0047): arrival times as given, to the microsecond.
RAW = ("INSERT INTO events (device_id, meter, ts, event_id, value, meta_id, received_at, ingested_at) "
       "VALUES (%s, 'energy', %s, %s, 1.5, event_meta_id('kWh', 'cumulative', 'p', 'electricity'), %s, %s)")


def _odd_events() -> list[tuple[str, datetime, str, datetime, datetime]]:
    """Rows at the edges of the compact form: (device, ts, id, received_at, ingested_at)."""
    ms = timedelta(milliseconds=1)
    at = T0 + timedelta(days=2, microseconds=654_321)  # a device time with microseconds stays exact
    return [
        ("odd", at, "1", T0 + timedelta(days=2, seconds=2), T0 + timedelta(days=2, seconds=3)),  # ms, µs ts: converts
        ("odd", at + timedelta(minutes=1), "2", T0 + 7 * ms, T0 + 9 * ms),     # received before ts (clock ahead)
        ("odd", at + timedelta(minutes=2), "3", T0 + timedelta(microseconds=7), T0 + 9 * ms),  # µs: stays
        ("odd", at + timedelta(minutes=3), "4", T0 + 7 * ms, T0 + timedelta(microseconds=9_001)),  # µs: stays
        ("old", datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC), "5", T0 + 3 * ms, T0 + 4 * ms),  # 56 years: converts
        ("old", datetime(1850, 1, 1, tzinfo=UTC), "6", T0 + 3 * ms, T0 + 4 * ms),  # beyond the bound: stays
        ("old", T0 + timedelta(days=3), "7", T0 + 3 * ms, datetime(1800, 1, 1, tzinfo=UTC)),  # beyond: stays
    ]


async def test_arrival_times_read_back_exactly_from_compressed_chunks(ts_pool: AsyncConnectionPool) -> None:
    events = _stream()
    await _store(ts_pool, events)
    async with ts_pool.connection() as conn:
        for device, ts, event_id, received, ingested in _odd_events():
            await conn.execute(RAW, (device, ts, event_id, received, ingested))
    before = await _rows(ts_pool, DESCRIBED)
    # The hub's writers record received_at to the millisecond (the stream's stamps have microseconds), and
    # ingested_at is the transaction's time to the millisecond.
    assert {e.received_at.microsecond % 1000 for e in events} != {0}
    assert await _rows(ts_pool, "SELECT count(*) FROM events WHERE device_id NOT IN ('odd', 'old') AND "
                                "(received_at <> date_trunc('milliseconds', received_at) OR "
                                "ingested_at <> date_trunc('milliseconds', ingested_at))") == [(0,)]
    assert await _rows(ts_pool, FORMS) == [(0, 0, len(before), len(before))]  # recent rows keep timestamptz
    await _compress_compact(ts_pool)
    assert await _rows(ts_pool, "SELECT bool_and(is_compressed) FROM timescaledb_information.chunks "
                                "WHERE hypertable_name = 'events'") == [(True,)]
    # Every row reads back as written, to the microsecond where it has one.
    assert await _rows(ts_pool, DESCRIBED) == before
    kept = await _rows(ts_pool, "SELECT event_seq FROM events WHERE received_ms IS NULL ORDER BY 1")
    assert kept == [(3,), (4,), (6,), (7,)]
    assert await _rows(ts_pool, FORMS) == [(len(before) - 4, len(before) - 4, 4, 4)]
    got = await _rows(ts_pool, "SELECT event_id, received_at, ingested_at FROM events_rows "
                               "WHERE device_id IN ('odd', 'old') ORDER BY event_id")
    assert got == [(i, r, g) for _, _, i, r, g in sorted(_odd_events(), key=lambda e: e[2])]
    # The compressed batches hold the integer columns (delta-of-delta encoded).
    columns = {str(r[0]) for r in await _rows(
        ts_pool, "SELECT DISTINCT a.attname FROM _timescaledb_catalog.compression_settings s "
                 "JOIN pg_attribute a ON a.attrelid = s.compress_relid JOIN _timescaledb_catalog.chunk c "
                 "ON c.relid = s.relid JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id "
                 "WHERE h.table_name = 'events' AND a.attnum > 0 AND NOT a.attisdropped")}
    assert {"received_ms", "ingested_ms", "received_at", "ingested_at"} <= columns


async def test_late_events_into_converted_chunks_are_new_once(ts_pool: AsyncConnectionPool) -> None:
    events = _stream()
    await _store(ts_pool, events)
    await _compress_compact(ts_pool)
    before = await _rows(ts_pool, DESCRIBED)
    # Resent with other arrival times (a redelivery arrives later): the same identities, nothing new.
    later = [replace(e, received_at=e.received_at + timedelta(hours=5, microseconds=321)) for e in events]
    assert await _store(ts_pool, later) == set()
    async with ts_pool.connection() as conn, conn.transaction():
        assert await DirectInserts().insert(conn, later[::-1]) == set()
    assert await _rows(ts_pool, DESCRIBED) == before
    # A late reading into the converted chunk: stored once, to the millisecond, and converted when compressed.
    late = _event("t1-reg", "777777", 1001, "0.25", late_s=86_400)
    for _ in range(2):
        assert await _store(ts_pool, [late]) == ({event_key(late)} if _ == 0 else set())
    await _compress_compact(ts_pool)
    got = await _rows(ts_pool, "SELECT received_at, ingested_at = date_trunc('milliseconds', ingested_at) "
                               "FROM events_rows WHERE event_id = '777777'")
    assert got == [(arrival_ms(late.received_at), True)]
    assert len(await _rows(ts_pool, DESCRIBED)) == len(before) + 1
    # A partially compressed chunk is compressed again as it is (0044): the late row keeps its timestamptz.
    assert await _rows(ts_pool, "SELECT count(*) FROM events WHERE received_ms IS NULL") == [(1,)]


async def test_a_row_without_an_arrival_time_is_refused(ts_pool: AsyncConnectionPool) -> None:
    at = T0 + timedelta(days=1)
    async with ts_pool.connection() as conn:
        for received_ms, ingested_ms, received_at in ((None, None, None), (5, None, None), (5, 6, at)):
            with pytest.raises(psycopg.errors.CheckViolation):
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO events (device_id, meter, ts, event_seq, value, meta_id, received_at, "
                        "received_ms, ingested_ms) VALUES ('w', 'energy', %s, 1, 1, 0, %s, %s, %s)",
                        (at, received_at, received_ms, ingested_ms))


async def test_both_storages_record_arrival_times_to_the_millisecond(plain_pool: AsyncConnectionPool,
                                                                      ts_pool: AsyncConnectionPool) -> None:
    events = _stream()
    stored = []
    for pool in (plain_pool, ts_pool):
        assert await _store(pool, events[:40]) == {event_key(e) for e in events[:40]}
        async with pool.connection() as conn, conn.transaction():
            assert await DirectInserts().insert(conn, events[40:]) == {event_key(e) for e in events[40:]}
        stored.append(await _rows(pool, "SELECT device_id, ts, event_id, received_at FROM events_rows "
                                        "ORDER BY 1, 2, 3"))
        assert await _rows(pool, "SELECT count(*) FROM events_rows WHERE ingested_at <> "
                                 "date_trunc('milliseconds', ingested_at)") == [(0,)]
    expected = sorted((e.device_id, e.ts, e.event_id, arrival_ms(e.received_at)) for e in events)
    assert stored[0] == stored[1] == expected
    assert arrival_ms(datetime(2026, 1, 1, 0, 0, 0, 999_999, tzinfo=UTC)) == datetime(2026, 1, 1, 0, 0, 0, 999_000,
                                                                                        tzinfo=UTC)


ARRIVALS = ['{ events(deviceId: "m2", first: 500) { edges { node { ts eventId receivedAt } } } }',
            '{ meterInspection(accountId: "a1") { deviceId meter lastReadingAt lastReceivedAt } }']


async def test_graphql_answers_equal_with_arrival_times_in_milliseconds(
        plain_pool: AsyncConnectionPool, ts_pool: AsyncConnectionPool, monkeypatch: pytest.MonkeyPatch) -> None:
    # The stream of test_timescale.py (late data and duplicates into compressed chunks, a billing run, a re-binding),
    # received at an instant with microseconds, its TimescaleDB half compressed as the hub does (arrival times
    # converted): the same answers as plain PostgreSQL, arrival times to the millisecond.
    monkeypatch.setattr(timescale_stream, "compress_everything", _compress_compact)
    monkeypatch.setattr(timescale_stream, "FLEET", [*timescale_stream.FLEET, *ARRIVALS])
    monkeypatch.setattr(sessions_billing, "NOW", sessions_billing.NOW + timedelta(microseconds=123_457))
    await play(plain_pool, timescale=False)
    await play(ts_pool, timescale=True)
    assert await _rows(ts_pool, "SELECT count(*) > 100 FROM events WHERE received_ms IS NOT NULL") == [(True,)]
    plain, timescale = await answers(plain_pool), await answers(ts_pool)
    for query, answer in plain.items():
        assert timescale[query] == answer, query
    received = str(plain[ARRIVALS[0]]) + str(plain[ARRIVALS[1]])
    assert received.count(".123000") > 100 and "123457" not in received, received[:500]


@pytest.fixture
def ts_empty_url(timescale_server_url: str) -> Iterator[str]:
    """A TimescaleDB database with no migration applied."""
    name = f"uh_arrival_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(timescale_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _with_db(timescale_server_url, name)
    drop_database(timescale_server_url, name)


async def test_the_migration_keeps_compressed_chunks_as_they_are(ts_empty_url: str) -> None:
    pool = await open_pool(ts_empty_url, min_size=1, max_size=2)
    try:
        async with pool.connection() as conn:  # the database as the release before 0047 left it
            await migrate_before(conn, "0047")
            # No job may run under the test (as in test_timescale_compact.py: a job started before the pause
            # deadlocked with a test's insert once); the scheduler stays stopped for this database.
            await conn.execute("SELECT _timescaledb_functions.stop_background_workers()")
            await conn.execute("SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs "
                               "WHERE job_id >= 1000")
            # Rows stored before, arrival times to the microsecond, compressed by 0044's function.
            for device, ts, event_id, received, ingested in _odd_events():
                await conn.execute(RAW, (device, ts, event_id, received, ingested))
            await conn.execute("SELECT count(events_compress_chunk(c)) FROM show_chunks('events') c")
        before = await _rows(pool, DESCRIBED)
        assert (await migrate(pool))[:1] == ["0047_events_arrival_ms"]
        assert await _rows(pool, DESCRIBED) == before
        assert await _rows(pool, "SELECT count(received_ms) FROM events") == [(0,)]  # nothing rewritten
        # New rows: to the millisecond, converted when their chunk is compressed; the old chunks stay as they are.
        events = [e for e in _stream() if e.device_id == "t1-reg"]
        await _store(pool, events)
        async with pool.connection() as conn:
            await conn.execute("CALL events_compress_job(0, %s)", ('{"after": "1 day"}',))
        got = await _rows(pool, DESCRIBED)
        assert set(before) < set(got) and len(got) == len(before) + len(events)
        assert await _rows(pool, "SELECT count(received_ms) FROM events") == [(len(events),)]
        assert await _rows(pool, "SELECT count(*) FROM events WHERE device_id = 't1-reg' AND ingested_ms IS NULL") == [
            (0,)]
    finally:
        await pool.close()
