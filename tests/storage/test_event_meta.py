"""Migration 0024: what every reading of a meter repeats (unit, kind, profile, service) is stored once."""

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
from tests.storage.migrate_before import migrate_before
from usagehub.core.events import MeterKind, UsageEvent
from usagehub.storage.events import event_key, insert_events
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import open_pool

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DESCRIBED = ("SELECT device_id, meter, ts, event_id, value, unit, kind, profile_id, service, received_at, "
             "reset_marker, text_value FROM events_described ORDER BY device_id, meter, ts, event_id")


def _event(device: str, n: int, *, profile: str = "acme-em340", unit: str = "kWh",
           kind: MeterKind = MeterKind.CUMULATIVE, service: str = "electricity") -> UsageEvent:
    return UsageEvent(device_id=device, event_id=str(n), meter="energy", ts=T0 + timedelta(minutes=15 * n),
                      value=Decimal(n) / 8, unit=unit, kind=kind, profile_id=profile, service=service,
                      received_at=T0 + timedelta(minutes=15 * n, seconds=2),
                      reset_marker="boot-1" if n == 2 else None, text_value="armed" if n == 3 else None)


def _row(e: UsageEvent) -> tuple[object, ...]:
    return (e.device_id, e.meter, e.ts, e.event_id, e.value, e.unit, e.kind.value, e.profile_id, e.service,
            e.received_at, e.reset_marker, e.text_value)


async def _rows(pool: AsyncConnectionPool, query: str) -> list[tuple[object, ...]]:
    async with pool.connection() as conn:
        return await (await conn.execute(query)).fetchall()


async def _insert(pool: AsyncConnectionPool, events: list[UsageEvent]) -> set[tuple[object, ...]]:
    async with pool.connection() as conn, conn.transaction():
        return set(await insert_events(conn, events))


async def test_each_event_keeps_its_own_description_stored_once(pool: AsyncConnectionPool) -> None:
    columns = await _rows(pool, "SELECT attname FROM pg_attribute WHERE attrelid = 'events'::regclass "
                                "AND attnum > 0 AND NOT attisdropped")
    assert not {"unit", "kind", "profile_id", "service"} & {c[0] for c in columns}
    meter = [_event("dev-1", n) for n in range(1, 5)]
    panel = [_event("panel-1", n, profile="ajax-hub", unit="count", kind=MeterKind.EVENT, service="security")
             for n in range(1, 3)]
    assert await _insert(pool, [*meter, *panel]) == {event_key(e) for e in [*meter, *panel]}
    assert await _rows(pool, DESCRIBED) == sorted(_row(e) for e in [*meter, *panel])
    assert await _rows(pool, "SELECT unit, kind, profile_id, service FROM event_meta ORDER BY 1") == [
        ("count", "event", "ajax-hub", "security"), ("kWh", "cumulative", "acme-em340", "electricity")]
    # A redelivery, even decoded by a changed profile, is the same event (DESIGN 1): nothing new is stored.
    assert await _insert(pool, [replace(meter[0], profile_id="acme-em340-v2")]) == set()
    # A new reading under the changed profile names it; the earlier readings keep theirs.
    later = _event("dev-1", 5, profile="acme-em340-v2")
    assert await _insert(pool, [later]) == {event_key(later)}
    got = await _rows(pool, "SELECT event_id, profile_id FROM events_described WHERE device_id = 'dev-1' "
                            "ORDER BY ts")
    assert got == [("1", "acme-em340"), ("2", "acme-em340"), ("3", "acme-em340"), ("4", "acme-em340"),
                   ("5", "acme-em340-v2")]
    assert len(await _rows(pool, "SELECT 1 FROM event_meta")) == 3


async def test_batches_racing_to_add_the_same_description_store_every_event(pool: AsyncConnectionPool) -> None:
    first = [_event("dev-a", n, profile="new-profile") for n in range(1, 4)]
    second = [_event("dev-b", n, profile="new-profile") for n in range(1, 4)]
    async with pool.connection() as a, pool.connection() as b:
        async with a.transaction():
            stored_a = await insert_events(a, first)  # its event_meta row is not committed yet
            async with asyncio.timeout(30):
                racing = asyncio.create_task(_in_tx(b, second))  # waits on that row's key, then finds it
                await asyncio.sleep(0.3)
                assert not racing.done()
        stored_b = await racing
    assert stored_a == {event_key(e) for e in first} and stored_b == {event_key(e) for e in second}
    assert await _rows(pool, DESCRIBED) == sorted(_row(e) for e in [*first, *second])
    assert len(await _rows(pool, "SELECT 1 FROM event_meta")) == 1


async def _in_tx(conn: psycopg.AsyncConnection[tuple[object, ...]], events: list[UsageEvent]) -> set[object]:
    async with conn.transaction():
        return set(await insert_events(conn, events))


@pytest.fixture
def empty_database_url(pg_server_url: str) -> Iterator[str]:
    """A database with no migration applied (on TimescaleDB when the run is in TimescaleDB mode)."""
    name = f"uh_meta_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _with_db(pg_server_url, name)
    drop_database(pg_server_url, name)


async def test_events_stored_before_the_migration_keep_their_description(empty_database_url: str) -> None:
    pool = await open_pool(empty_database_url, min_size=1, max_size=2)
    try:
        older = [_event("dev-1", n) for n in range(1, 4)] + [_event("panel-1", 1, profile="ajax-hub", unit="count",
                                                                     kind=MeterKind.EVENT, service="security")]
        async with pool.connection() as conn:  # the database as the release before 0024 left it
            await migrate_before(conn, "0024")
            await conn.execute("SELECT ensure_event_partition('2026-03-01')")
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO events (device_id, meter, ts, event_id, value, unit, kind, profile_id, service, "
                    "received_at, reset_marker, text_value) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [_row(e) for e in older])
            await conn.execute("INSERT INTO events_packed VALUES ('events_2026_03', 2, 1)")
            timescale = await (await conn.execute(
                "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")).fetchone()
            if timescale and timescale[0]:  # an old chunk is compressed: the migration reaches into it too
                # (the compression policy's background job may compress it already, even while we do: this
                # chunk is old; a chunk it compressed between our check and our lock raises, and is what we want)
                chunks = await (await conn.execute("SELECT c::text FROM show_chunks('events') c")).fetchall()
                for (chunk,) in chunks:
                    try:
                        async with conn.transaction():
                            await conn.execute("SELECT compress_chunk(%s::regclass, if_not_compressed => true)",
                                               (chunk,))
                    except psycopg.errors.DuplicateObject:
                        pass
                compressed = await (await conn.execute(
                    "SELECT bool_and(is_compressed) FROM timescaledb_information.chunks "
                    "WHERE hypertable_name = 'events'")).fetchone()
                assert compressed is not None and compressed[0] is True
        assert [n for n in await migrate(pool) if n < "0025"] == ["0024_event_meta"]
        assert await _rows(pool, DESCRIBED) == sorted(_row(e) for e in older)
        assert await _rows(pool, "SELECT * FROM events_packed") == []  # rewritten: packed again later
        later = _event("dev-1", 9)
        assert await _insert(pool, [*older, later]) == {event_key(later)}  # identities survive the migration
        assert len(await _rows(pool, "SELECT 1 FROM event_meta")) == 2
    finally:
        await pool.close()
