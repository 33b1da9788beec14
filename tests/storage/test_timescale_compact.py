"""Events in compact forms on TimescaleDB (migrations 0043, 0044): every stored fact reads back exactly, once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from msgspec.structs import replace
from psycopg_pool import AsyncConnectionPool

from tests.conftest import _with_db, drop_database
from tests.storage import timescale_stream
from tests.storage.migrate_before import migrate_before
from tests.storage.test_timescale import _rows
from tests.storage.timescale_stream import answers, play
from usagehub.core.counters import Reading
from usagehub.core.events import MeterKind, UsageEvent
from usagehub.storage.events import CANONICAL_ID, compact_id, event_key, insert_events
from usagehub.storage.events_direct import DirectInserts
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import open_pool
from usagehub.storage.usage import stored_neighbourhoods

T0 = datetime(2026, 6, 1, tzinfo=UTC)
DESCRIBED = ("SELECT device_id, meter, ts, event_id, value::text, unit, kind, profile_id, service, received_at, "
             "reset_marker, text_value, ingested_at FROM events_described ORDER BY device_id, meter, ts, event_id")
# Ids that must stay text (not the canonical decimal of an integer below 10^18) and ids that convert.
TEXT_IDS = ["007", "0x1F", "-5", "+5", " 5", "5 ", "1e3", "\u0663", "\uff15", "abc", "", "1" * 19, "9" * 64,
            "9223372036854775807", "00"]
SEQ_IDS = ["0", "7", "10", "9", "123456789", "9" * 18]
# Values that convert (any scale up to 18, trailing zeros kept) and values that stay numeric.
VALUES = ["12.500", "0.000", "0", "-1.5", "1E-18", "123456789012345.678", "-999999999999999999", "3.14159265358979"]
BIG_VALUES = ["1000000000000000000", "1E-19", "123456789012345678901234.5", "-1E+30"]
# How PostgreSQL prints them, by stored form.
COMPACT_TEXT = {"12.500", "0.000", "0", "-1.5", "0.000000000000000001", "123456789012345.678", "-999999999999999999",
                "3.14159265358979", "5.5", "5.25"}
NUMERIC_TEXT = {"1000000000000000000", "0.0000000000000000001", "123456789012345678901234.5",
                "-1000000000000000000000000000000"}




def _event(device: str, event_id: str, slot: int, value: str | Decimal, *, late_s: int = 2) -> UsageEvent:
    ts = T0 + timedelta(minutes=15 * slot)
    return UsageEvent(device_id=device, event_id=event_id, meter="energy", ts=ts, value=Decimal(value), unit="kWh",
                      kind=MeterKind.CUMULATIVE, profile_id="acme-em340", service="electricity",
                      received_at=ts + timedelta(seconds=late_s, microseconds=123_457 * slot % 1_000_000),
                      reset_marker="boot-1" if slot % 7 == 3 else None, text_value=None)


def _stream() -> list[UsageEvent]:
    """Two meters with every id and value form, two events at one instant ordered by text ('10' < '9')."""
    events: list[UsageEvent] = []
    ids = TEXT_IDS + SEQ_IDS
    values = VALUES + BIG_VALUES
    for device in ("t1-m1", "t2-m1"):
        for slot, event_id in enumerate(ids):
            events.append(_event(device, event_id, slot * 97 % (len(ids) * 4), values[slot % len(values)]))
        events.append(_event(device, "10", 900, "5.5"))
        events.append(_event(device, "9", 900, "5.25"))
    # A register over three weeks (three chunks): sequence numbers, readings in thousandths.
    events += [_event("t1-reg", str(1000 + n), 1000 + n, 100 + n * Decimal("0.213")) for n in range(0, 2000, 3)]
    return events


async def _store(pool: AsyncConnectionPool, events: list[UsageEvent]) -> set[tuple[object, ...]]:
    async with pool.connection() as conn, conn.transaction():
        return set(await insert_events(conn, events))


async def _compress_compact(pool: AsyncConnectionPool) -> int:
    """Convert and compress every chunk of events, then the other hypertables as the test stream does."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(events_compress_chunk(c)) FROM show_chunks('events') c "
                                 "UNION ALL SELECT count(compress_chunk(c, if_not_compressed => true)) "
                                 "FROM show_chunks('session_points') c")
        return sum(int(str(r[0])) for r in await cur.fetchall())


async def test_ids_and_values_read_back_exactly_from_compact_compressed_chunks(ts_pool: AsyncConnectionPool) -> None:
    events = _stream()
    assert await _store(ts_pool, events) == {event_key(e) for e in events}
    before = await _rows(ts_pool, DESCRIBED)
    assert len(before) == len(events)
    # Ids take their compact form on insert (the hub's staged insert), values when their chunk is compressed.
    assert await _rows(ts_pool, "SELECT count(event_seq), count(value_int) FROM events") == [
        (2 * (len(SEQ_IDS) + 2) + 667, 0)]
    assert await _compress_compact(ts_pool) >= 3
    assert await _rows(ts_pool, "SELECT bool_and(is_compressed) FROM timescaledb_information.chunks "
                                "WHERE hypertable_name = 'events'") == [(True,)]
    # Every column reads back as written: ids to the character, values to the digit and scale ('12.500').
    assert await _rows(ts_pool, DESCRIBED) == before
    # Stored forms: exactly the canonical integers below 10^18 became event_seq, the rest stayed text.
    forms = await _rows(ts_pool, "SELECT DISTINCT event_seq::text, event_id FROM events WHERE device_id LIKE 't_-m1'")
    assert {f[0] for f in forms if f[0] is not None} == set(SEQ_IDS) | {"10"}
    assert {f[1] for f in forms if f[1] is not None} == set(TEXT_IDS)
    assert all((seq is None) != (text is None) for seq, text in forms)
    values = await _rows(ts_pool, "SELECT DISTINCT coalesce(value, (value_int || 'e-' || value_scale)::numeric)::text, "
                                  "value_int IS NOT NULL FROM events WHERE device_id LIKE 't_-m1'")
    assert {v for v, compact in values if compact} == COMPACT_TEXT
    assert {v for v, compact in values if not compact} == NUMERIC_TEXT
    # No bloom filter in the compressed batches (0043); the compact columns are there.
    columns = {str(r[0]) for r in await _rows(
        ts_pool, "SELECT DISTINCT a.attname FROM _timescaledb_catalog.compression_settings s "
                 "JOIN pg_attribute a ON a.attrelid = s.compress_relid JOIN _timescaledb_catalog.chunk c "
                 "ON c.relid = s.relid JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id "
                 "WHERE h.table_name = 'events' AND a.attnum > 0 AND NOT a.attisdropped")}
    assert {"event_seq", "value_int", "value_scale", "event_id", "value"} <= columns
    assert not [c for c in columns if "bloom" in c], columns


async def test_duplicates_of_converted_events_are_never_new(ts_pool: AsyncConnectionPool) -> None:
    events = _stream()
    await _store(ts_pool, events)
    await _compress_compact(ts_pool)
    before = await _rows(ts_pool, DESCRIBED)
    # The staged insert and the direct copy (a fresh pipeline: nothing recent) both find every identity,
    # whichever form it is stored in; a changed value under a stored identity changes nothing.
    assert await _store(ts_pool, events) == set()
    assert await _store(ts_pool, [replace(e, value=Decimal(1)) for e in events[:5]]) == set()
    # Found without decompressing anything (the identity index is on plain columns, as the primary key was).
    assert await _uncompressed_rows(ts_pool) == 0
    inserts = DirectInserts()
    async with ts_pool.connection() as conn, conn.transaction():
        assert await inserts.insert(conn, events[::-1]) == set()
    assert await _rows(ts_pool, DESCRIBED) == before
    # New ids beside converted ones in the same compressed batches: only they are new, in their own form.
    late = [_event("t1-m1", "8", 2, "7.000"), _event("t1-m1", "08", 2, "7.000"), _event("t2-m1", "9" * 64, 900, "1")]
    async with ts_pool.connection() as conn, conn.transaction():
        assert await inserts.insert(conn, late) == {event_key(e) for e in late}
    stored = await _rows(ts_pool, "SELECT device_id, event_id, value::text FROM events_rows WHERE (device_id, ts) IN "
                                  "(('t1-m1', %s), ('t2-m1', %s)) AND event_id IN ('8', '08', %s) ORDER BY 1, 2",
                         T0 + timedelta(minutes=30), T0 + timedelta(minutes=15 * 900), "9" * 64)
    assert stored == [("t1-m1", "08", "7.000"), ("t1-m1", "8", "7.000"), ("t2-m1", "9" * 64, "1")]
    assert len(await _rows(ts_pool, DESCRIBED)) == len(before) + 3


async def _uncompressed_rows(pool: AsyncConnectionPool) -> int:
    """Rows of events outside the compressed batches (decompressed by a write, or written since)."""
    total = 0
    for (chunk,) in await _rows(pool, "SELECT c::text FROM show_chunks('events') c"):
        total += int(str((await _rows(pool, f"SELECT count(*) FROM ONLY {chunk}"))[0][0]))
    return total


async def test_any_writer_stores_one_form_per_id(ts_pool: AsyncConnectionPool) -> None:
    # A writer naming event_id (tests, tools) gets the same forms and the same identity as the hub's inserts.
    insert = ("INSERT INTO events (device_id, meter, ts, event_id, value, meta_id, received_at) "
              "VALUES ('w', 'energy', %s, %s, 1.50, event_meta_id('kWh', 'cumulative', 'p', 'electricity'), %s)")
    at = T0 + timedelta(days=3)
    async with ts_pool.connection() as conn:
        for event_id in ("5", "05", "9" * 18, "9" * 19):
            await conn.execute(insert, (at, event_id, at))
        for event_id in ("5", "05", "9" * 18, "9" * 19):
            with pytest.raises(psycopg.errors.UniqueViolation):
                async with conn.transaction():
                    await conn.execute(insert, (at, event_id, at))
        cur = await conn.execute(insert.replace("%s)", "%s) ON CONFLICT DO NOTHING"), (at, "05", at))
        assert cur.rowcount == 0
        # In a compressed chunk too (TimescaleDB checks it before the trigger: the trigger looks itself), loudly.
        await conn.execute("SELECT count(events_compress_chunk(c)) FROM show_chunks('events') c")
        for event_id in ("5", "9" * 18):
            with pytest.raises(psycopg.errors.UniqueViolation):
                async with conn.transaction():
                    await conn.execute(insert.replace("%s)", "%s) ON CONFLICT DO NOTHING"), (at, event_id, at))
        cur = await conn.execute(insert.replace("%s)", "%s) ON CONFLICT DO NOTHING"), (at, "05", at))
        assert cur.rowcount == 0
        # A row in a non-canonical form would be a second identity: refused.
        with pytest.raises(psycopg.errors.CheckViolation):
            await conn.execute("ALTER TABLE events DISABLE TRIGGER events_canonical_id")
            async with conn.transaction():
                await conn.execute(insert, (at + timedelta(minutes=1), "6", at))
        await conn.execute("ALTER TABLE events ENABLE TRIGGER events_canonical_id")
    assert await _rows(ts_pool, "SELECT event_id, event_seq, value::text, value_int FROM events WHERE device_id = 'w' "
                                "ORDER BY 2, 1") == [(None, 5, None, 150), (None, int("9" * 18), None, 150),
                                                     ("05", None, None, 150), ("9" * 19, None, None, 150)]
    assert await _rows(ts_pool, "SELECT event_id, event_seq FROM events WHERE device_id = 'w' ORDER BY 2, 1") == [
        (None, 5), (None, int("9" * 18)), ("05", None), ("9" * 19, None)]
    assert await _rows(ts_pool, "SELECT event_id FROM events_rows WHERE device_id = 'w' ORDER BY 1") == [
        ("05",), ("5",), ("9" * 18,), ("9" * 19,)]


async def test_the_job_converts_old_chunks_and_recompresses_late_rows(ts_pool: AsyncConnectionPool) -> None:
    events = _stream()
    await _store(ts_pool, events)
    before = await _rows(ts_pool, DESCRIBED)
    async with ts_pool.connection() as conn:
        await conn.execute("CALL events_compress_job(0, %s)", ('{"after": "1 day"}',))
    assert await _rows(ts_pool, "SELECT count(*) FILTER (WHERE event_seq IS NOT NULL), count(*) FILTER "
                                "(WHERE value_int IS NOT NULL) FROM events WHERE device_id = 't1-reg'") == [(667, 667)]
    await _store(ts_pool, [_event("t1-reg", "5000", 1001, "0.5")])  # a late row in a compressed chunk
    async with ts_pool.connection() as conn:
        await conn.execute("CALL events_compress_job(0, %s)", ('{"after": "1 day"}',))
    got = await _rows(ts_pool, DESCRIBED)
    assert len(got) == len(before) + 1 and set(before) < set(got)
    assert await _rows(ts_pool, "SELECT bool_and(is_compressed) FROM timescaledb_information.chunks "
                                "WHERE hypertable_name = 'events'") == [(True,)]
    # The compression policy of 0014 is replaced by the job (paused in test clones, as every job).
    assert await _rows(ts_pool, "SELECT proc_name FROM timescaledb_information.jobs WHERE hypertable_name = 'events' "
                                "OR proc_name = 'events_compress_job'") == [("events_compress_job",)]
    async with ts_pool.connection() as conn:
        # Another hypertable's chunk is refused too (its rows have no ids to convert).
        await conn.execute("CREATE TABLE other_series (ts timestamptz NOT NULL, event_id text, value numeric)")
        await conn.execute("SELECT create_hypertable('other_series', by_range('ts'))")
        await conn.execute("INSERT INTO other_series VALUES (now(), '1', 1)")
        for other in ("'event_meta'::regclass", "(SELECT c FROM show_chunks('other_series') c)"):
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="is not a chunk of events"):
                await conn.execute(f"SELECT events_compress_chunk({other})")


async def test_neighbours_over_compact_chunks_equal_plain_postgresql(plain_pool: AsyncConnectionPool,
                                                                      ts_pool: AsyncConnectionPool) -> None:
    # The usage neighbours query over compressed chunks crashed TimescaleDB 2.29.2 with sparse_index = ''.
    events = _stream()
    for pool in (plain_pool, ts_pool):
        await _store(pool, events)
    await _compress_compact(ts_pool)
    probes = {
        ("t1-reg", "energy"): [Reading(ts=T0 + timedelta(minutes=15 * s, seconds=1), value=Decimal(1), event_id="x",
                                       reset_marker=None) for s in (1000, 1500, 2999, 3500)],
        ("t1-m1", "energy"): [Reading(ts=T0 + timedelta(minutes=15 * 900), value=Decimal(1), event_id=i,
                                      reset_marker=None) for i in ("1", "95")],
        ("t2-m1", "energy"): [Reading(ts=T0 + timedelta(minutes=15 * s), value=Decimal(1), event_id="zz",
                                      reset_marker=None) for s in (0, 40, 85)],
    }
    got = []
    for pool in (plain_pool, ts_pool):
        async with pool.connection() as conn:
            got.append(await stored_neighbourhoods(conn, probes))
    assert got[0] == got[1]
    assert [r.event_id for r in got[1][("t1-m1", "energy")]][-2:] == ["10", "9"]  # text order at one instant
    assert sum(len(v) for v in got[1].values()) >= 9


async def test_both_storages_give_identical_graphql_answers_with_compact_chunks(
        plain_pool: AsyncConnectionPool, ts_pool: AsyncConnectionPool, monkeypatch: pytest.MonkeyPatch) -> None:
    # The stream of test_timescale.py, its TimescaleDB half compressed in compact forms.
    monkeypatch.setattr(timescale_stream, "compress_everything", _compress_compact)
    await play(plain_pool, timescale=False)
    await play(ts_pool, timescale=True)
    assert await _rows(ts_pool, "SELECT count(*) FROM events WHERE event_seq IS NOT NULL") != [(0,)]
    plain, timescale = await answers(plain_pool), await answers(ts_pool)
    assert sum(len(str(v)) for v in plain.values()) > 20_000
    for query, answer in plain.items():
        assert timescale[query] == answer, query


@pytest.fixture
def ts_empty_url(timescale_server_url: str) -> Iterator[str]:
    """A TimescaleDB database with no migration applied."""
    name = f"uh_compact_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(timescale_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _with_db(timescale_server_url, name)
    drop_database(timescale_server_url, name)


async def test_the_migration_converts_a_database_with_compressed_chunks(ts_empty_url: str) -> None:
    pool = await open_pool(ts_empty_url, min_size=1, max_size=2)
    try:
        async with pool.connection() as conn:  # the database as the release before 0043 left it
            await migrate_before(conn, "0043")
            # No job of this database's scheduler may run under the test: 0044 adds a job the scheduler may start
            # before the test pauses it, and its compression deadlocked with the test's insert (CI, once). The
            # scheduler stays stopped for this database until something starts it again.
            await conn.execute("SELECT _timescaledb_functions.stop_background_workers()")
            await conn.execute("SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs "
                               "WHERE job_id >= 1000")
        events = _stream()
        assert await _store(pool, events) == {event_key(e) for e in events}
        async with pool.connection() as conn:
            await conn.execute("SELECT count(compress_chunk(c)) FROM show_chunks('events') c")
        before = await _rows(pool, DESCRIBED)
        assert (await migrate(pool))[:2] == ["0043_events_no_bloom", "0044_events_compact"]
        async with pool.connection() as conn:  # 0044 adds events_compress_job: this test runs it itself
            await conn.execute("SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs "
                               "WHERE job_id >= 1000")
        assert await _rows(pool, DESCRIBED) == before
        assert await _rows(pool, "SELECT count(event_seq) FROM events") == [(2 * (len(SEQ_IDS) + 2) + 667,)]
        assert await _store(pool, events) == set()
        # The scheduler may have started the new job between the migration and the pause above: two compressions
        # of one chunk can deadlock (one is cancelled, nothing is lost). Then this run goes again.
        for attempt in range(5):
            try:
                async with pool.connection() as conn:
                    await conn.execute("CALL events_compress_job(0, %s)", ('{"after": "1 day"}',))
                break
            except psycopg.errors.DeadlockDetected:
                if attempt == 4:
                    raise
                await asyncio.sleep(1)
        assert await _rows(pool, DESCRIBED) == before
        assert await _store(pool, events) == set()
        assert await _uncompressed_rows(pool) == 0
    finally:
        await pool.close()


async def test_the_writers_and_the_trigger_agree_on_which_ids_are_compact(ts_pool: AsyncConnectionPool) -> None:
    # The direct COPY decides in Python, the staged insert and the trigger in SQL: one answer for every id.
    ids = [*TEXT_IDS, *SEQ_IDS, "5\n", "\n5", "1" * 18, "0" * 18, "1" * 17 + "0", "10" * 9, "12\u0663"]
    got = await _rows(ts_pool, f"SELECT i, i ~ '{CANONICAL_ID}' FROM unnest(%s::text[]) AS i", ids)
    assert [(i, compact_id(i) is not None) for i in ids] == got
    assert {i for i, canonical in got if canonical} == set(SEQ_IDS) | {"1" * 18, "1" * 17 + "0", "10" * 9}
    # And the direct COPY stores each in that form.
    events = [_event("cp", event_id, slot, "1.5") for slot, event_id in enumerate(ids)]
    async with ts_pool.connection() as conn, conn.transaction():
        assert await DirectInserts().insert(conn, events) == {event_key(e) for e in events}
    stored = await _rows(ts_pool, "SELECT event_seq, event_id FROM events WHERE device_id = 'cp'")
    assert sorted(str(seq) if seq is not None else str(text) for seq, text in stored) == sorted(ids)
    assert {str(seq) for seq, _ in stored if seq is not None} == {i for i, canonical in got if canonical}
