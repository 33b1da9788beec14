"""Compressed events carry no bloom filter (migration 0030) and still de-duplicate and read back exactly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from psycopg_pool import AsyncConnectionPool

from tests.conftest import require_timescale
from usagehub.storage.pool import open_pool

MIGRATION = Path(__file__).resolve().parents[2] / "usagehub/storage/migrations/0030_events_sparse_index.sql"
READINGS = """
INSERT INTO events (device_id, meter, ts, event_id, value, meta_id, received_at, ingested_at)
SELECT 'dev-' || d, 'energy', t, (n + %(shift)s)::text || %(suffix)s, round(n * 0.2 + d, 3),
       event_meta_id('kWh', 'cumulative', 'acme-em340', 'electricity'), t + interval '1.234567 s',
       t + interval '2.345678 s'
FROM generate_series(1, 20) d,
     generate_series(%(since)s::timestamptz, %(until)s::timestamptz, interval '15 minutes') WITH ORDINALITY g(t, n)
ON CONFLICT DO NOTHING"""
SINCE, UNTIL = datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 9, 20, tzinfo=UTC)


@pytest.fixture
async def ts_pool(timescale_database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    """An open pool on a fresh, migrated TimescaleDB database."""
    p = await open_pool(timescale_database_url, min_size=1, max_size=2)
    yield p
    await p.close()


async def _rows(pool: AsyncConnectionPool, query: str, *params: object) -> list[tuple[object, ...]]:
    async with pool.connection() as conn:
        return list(await (await conn.execute(query, params)).fetchall())


async def _compressed_columns(pool: AsyncConnectionPool) -> set[str]:
    return {str(r[0]) for r in await _rows(
        pool, "SELECT DISTINCT a.attname FROM _timescaledb_catalog.compression_settings s "
              "JOIN pg_attribute a ON a.attrelid = s.compress_relid WHERE s.relid::text LIKE '%%hyper%%' "
              "AND a.attnum > 0 AND NOT a.attisdropped AND s.compress_relid IS NOT NULL")}


async def test_compressed_events_have_no_bloom_and_dedupe_late_events_exactly(ts_pool: AsyncConnectionPool) -> None:
    require_timescale()
    args = {"since": SINCE, "until": UNTIL, "shift": 0, "suffix": ""}
    async with ts_pool.connection() as conn:
        await conn.execute(READINGS, args)
    stored = await _rows(ts_pool, "SELECT * FROM events ORDER BY device_id, ts, event_id")
    chunks = await _rows(ts_pool, "SELECT count(compress_chunk(c)) FROM show_chunks('events') c")
    assert chunks[0][0] >= 3  # type: ignore[operator]
    columns = await _compressed_columns(ts_pool)
    assert {"event_id", "value", "received_at", "ingested_at"} <= columns
    assert not [c for c in columns if "bloom" in c], columns
    # Readers get every column as it was written, to the microsecond.
    assert await _rows(ts_pool, "SELECT * FROM events ORDER BY device_id, ts, event_id") == stored
    # Late events into the compressed chunks: the same readings again (counted once) and new ones.
    async with ts_pool.connection() as conn:
        await conn.execute(READINGS, args)
        await conn.execute(READINGS, args | {"shift": 7, "suffix": "-late", "until": datetime(2026, 9, 2, tzinfo=UTC)})
    assert await _rows(ts_pool, "SELECT count(*) FROM events") == [(len(stored) + 20 * 97,)]
    assert await _rows(ts_pool, "SELECT * FROM events WHERE event_id NOT LIKE '%%-late' "
                                "ORDER BY device_id, ts, event_id") == stored


async def test_the_migration_applies_over_chunks_compressed_with_a_bloom(ts_pool: AsyncConnectionPool) -> None:
    """A database compressed before 0030: its chunks keep their filter, and the setting still applies."""
    require_timescale()
    async with ts_pool.connection() as conn:
        await conn.execute("ALTER TABLE events RESET (timescaledb.sparse_index)")
        await conn.execute(READINGS, {"since": SINCE, "until": UNTIL, "shift": 0, "suffix": ""})
        await conn.execute("SELECT count(compress_chunk(c)) FROM show_chunks('events') c")
    assert [c for c in await _compressed_columns(ts_pool) if "bloom" in c]  # the automatic filter, as before 0030
    async with ts_pool.connection() as conn:
        await conn.execute(MIGRATION.read_text())
        await conn.execute("SELECT count(decompress_chunk(c)) FROM show_chunks('events') c")
        await conn.execute("SELECT count(compress_chunk(c)) FROM show_chunks('events') c")
    assert not [c for c in await _compressed_columns(ts_pool) if "bloom" in c]
