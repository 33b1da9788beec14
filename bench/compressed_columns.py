"""What each column of ``events`` costs once TimescaleDB compresses it, and what other representations would cost.

Loads the fleet of bench/storage_size.py (15-minute register readings, arrival jitter in whole milliseconds as
the hub records it since 0047) into a fresh embedded TimescaleDB, compresses the chunks as the hub does
(``events_compress_chunk``: compact forms of ids and values, migration 0044; arrival times as integer
milliseconds, 0047; no bloom filter, 0043), and prints the stored bytes per event of every column
of the compressed chunks (``pg_column_size`` of the column arrays, so TOAST compression included). Then it
copies the events into scratch hypertables: the layout before 0043/0044 (text ids, numeric values, the primary
key and its automatic bloom filter), that layout with each sparse-index choice, and copies that differ in one
column's representation, compresses them the same way, and prints their bytes per event, all in the same run.

``--insert-only`` times the hub's event writers on TimescaleDB instead (storage.events_direct, falling back to
storage.events for duplicates): batches of a fleet's new readings and the same batches again, medians. It uses
nothing of 0043/0044, so a base checkout's code can run it for a before/after pair:
``PYTHONPATH=<base worktree> .venv/bin/python bench/compressed_columns.py --insert-only``.

``--intervals-only`` measures the events as compressed and then the chunk intervals alone (``--intervals 7,14``):
the compact events in hypertables of each chunk interval, arrival times as timestamptz and as integer ms, bytes
per event over all chunks and over the chunks the data fills.

Run: .venv/bin/python bench/compressed_columns.py --devices 200 --days 14     # ~2 min here
     .venv/bin/python bench/compressed_columns.py --devices 200 --days 112 --intervals-only   # ~6 min
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from psycopg_pool import AsyncConnectionPool

sys.path.insert(0, str(Path(__file__).resolve().parent))

from storage_size import START, compressed_parts, load, scalar

from usagehub.core.events import MeterKind, UsageEvent
from usagehub.storage.embedded import embedded_database_url
from usagehub.storage.events_direct import DirectInserts
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import open_pool

# Scratch copies of events: (name, select list replacing the migrated columns, what it tries).
VARIANTS = [
    ("same", "device_id, meter, ts, event_id, value, meta_id, received_at, ingested_at",
     "the columns as migrated (checks the copy measures like the original)"),
    ("event_id_bigint", "device_id, meter, ts, event_id::bigint AS event_id, value, meta_id, received_at, ingested_at",
     "event_id as bigint (a device sequence number is an integer)"),
    ("arrival_offsets_us", "device_id, meter, ts, event_id, value, meta_id, "
     "(extract(epoch FROM received_at - ts) * 1000000)::bigint AS received_after_us, "
     "(extract(epoch FROM ingested_at - received_at) * 1000000)::bigint AS ingested_after_us",
     "received_at as µs after ts, ingested_at as µs after received_at (exact)"),
    ("arrival_ms", "device_id, meter, ts, event_id, value, meta_id, date_trunc('milliseconds', received_at) "
     "AS received_at, date_trunc('milliseconds', ingested_at) AS ingested_at",
     "received_at and ingested_at truncated to milliseconds (drops precision)"),
    ("value_scaled", "device_id, meter, ts, event_id, (value * 1000)::bigint AS value_milli, meta_id, received_at, "
     "ingested_at", "value as a bigint of thousandths (only where the profile's scale allows it)"),
    ("arrival_ms_offsets", "device_id, meter, ts, event_id, value, meta_id, "
     "(extract(epoch FROM received_at - ts) * 1000)::bigint AS received_after_ms, "
     "(extract(epoch FROM ingested_at - received_at) * 1000)::bigint AS ingested_after_ms",
     "received_at as ms after ts, ingested_at as ms after received_at (drops the microseconds)"),
]
# The layout before migrations 0043/0044 (the events' primary key: TimescaleDB adds its bloom filter), and with
# each sparse-index choice: (name, sparse_index or None for the automatic set, what it is).
KEYED = [("keyed", None, "before 0043/0044: text ids, numeric values, the key's automatic bloom filter"),
         ("keyed_minmax_ts", "minmax(ts)", "0043 alone: sparse index minmax(ts), no bloom filter"),
         ("keyed_no_sparse", "", "no sparse index at all (crashes the neighbours query, not adopted)")]


async def compressed_column_bytes(conn: Any, table: str, rows: int) -> dict[str, float]:
    """Bytes per row of each column of ``table``'s compressed chunks (arrays and their metadata)."""
    chunks = [r[0] for r in await (await conn.execute(
        "SELECT s.compress_relid::text FROM _timescaledb_catalog.compression_settings s "
        "JOIN _timescaledb_catalog.chunk c ON c.relid = s.relid "
        "JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id "
        "WHERE h.table_name = %s AND s.compress_relid IS NOT NULL",
        (table,))).fetchall()]
    totals: dict[str, float] = {}
    for chunk in chunks:
        columns = [r[0] for r in await (await conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum", (chunk,))).fetchall()]
        sizes = ", ".join(f'coalesce(sum(pg_column_size("{c}")), 0)' for c in columns)
        got = await (await conn.execute(f"SELECT {sizes} FROM {chunk}")).fetchone()
        for c, size in zip(columns, got or (), strict=True):
            totals[c] = totals.get(c, 0.0) + float(size)
    return {c: v / rows for c, v in totals.items()}


async def scratch(conn: Any, name: str, select: str, *, key: bool = False, sparse: str | None = None) -> None:
    """A hypertable holding the events as ``select`` represents them, compressed like events.

    ``key`` adds the events' primary key (TimescaleDB then adds a bloom filter over (ts, event_id) to each
    compressed batch); ``sparse`` sets the sparse indexes explicitly ('' for none).
    """
    table = f"ev_{name}"
    await conn.execute(f"DROP TABLE IF EXISTS {table}")
    await conn.execute(f"CREATE TABLE {table} AS SELECT {select} FROM events_rows ORDER BY device_id, meter, ts")
    if key:
        await conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (device_id, meter, ts, event_id)")
    await conn.execute(f"SELECT create_hypertable('{table}', 'ts', chunk_time_interval => interval '7 days', "
                       "migrate_data => true, create_default_indexes => false)")
    options = "" if sparse is None else f", timescaledb.sparse_index = '{sparse}'"
    await conn.execute(f"ALTER TABLE {table} SET (timescaledb.compress, timescaledb.compress_segmentby = "
                       f"'device_id, meter', timescaledb.compress_orderby = 'ts, event_id'{options})")
    await conn.execute(f"SELECT count(compress_chunk(c)) FROM show_chunks('{table}') c")


# Late events into compressed chunks: new ones (a reading missed, sent again days later) and duplicates.
# Into events (0044) the ids go in the form the hub writes (storage/events.py): canonical integers as event_seq.
# (The pattern is repeated here, not imported, so that --insert-only runs with a base checkout's code.)
CANONICAL_ID = "^(0|[1-9][0-9]{0,17})$"
LATE = """
INSERT INTO {table} (device_id, meter, ts, {ids}, value, meta_id, received_at, ingested_at)
SELECT device_id, meter, ts + %(shift)s::interval, {values}, value, meta_id, received_at, ingested_at
FROM events_rows WHERE ts >= %(since)s AND ts < %(since)s + interval '15 minutes' ORDER BY device_id
ON CONFLICT DO NOTHING"""


LATE_IDS = {False: {"ids": "event_id", "values": "event_id || %(suffix)s"},
            True: {"ids": "event_id, event_seq", "values": (
                f"CASE WHEN event_id || %(suffix)s ~ '{CANONICAL_ID}' THEN NULL ELSE event_id || %(suffix)s END, "
                f"CASE WHEN event_id || %(suffix)s ~ '{CANONICAL_ID}' THEN event_id::bigint END")}}


async def late_inserts(conn: Any, table: str, since: Any, rounds: int = 5) -> tuple[float, float]:
    """Median ms of inserting one quarter-hour of the fleet again: as new late events, and as duplicates."""
    new, dup = [], []
    for i in range(rounds):
        at = since + timedelta(hours=7 * i)
        for suffix, shift, out in (("-late", "7 minutes", new), ("", "0", dup)):
            t0 = time.perf_counter()
            await conn.execute(LATE.format(table=table, **LATE_IDS[table == "events"]),
                               {"since": at, "suffix": suffix, "shift": shift})
            out.append((time.perf_counter() - t0) * 1000)
    return statistics.median(new), statistics.median(dup)


# The compact events with their arrival times as timestamptz, or as integer milliseconds (0047: the ms after ts
# truncated to the ms, and after received_at; TimescaleDB delta-of-delta encodes integers, a timestamptz keeps the
# µs bits). Both read back from either stored form; the ms form needs arrival times in whole ms.
RECEIVED = "coalesce(received_at, events_ms_floor(ts) + received_ms * interval '1 millisecond')"
ARRIVALS = {"timestamptz": f"{RECEIVED} AS received_at, coalesce(ingested_at, {RECEIVED} + ingested_ms * "
                           "interval '1 millisecond') AS ingested_at",
            "ms": "coalesce(received_ms, events_ms_after(received_at, events_ms_floor(ts))) AS received_ms, "
                  "coalesce(ingested_ms, events_ms_after(ingested_at, received_at)) AS ingested_ms"}


async def chunk_interval(conn: Any, pool: AsyncConnectionPool, days: int, arrivals: str) -> tuple[float, float, int]:
    """Hypertable bytes per event of the compact events in ``days``-day chunks: all chunks, and only the chunks the
    data fills (no partial chunk at either end); and how many full chunks there are."""
    table = f"ev_chunk_{days}d"
    await conn.execute(f"CREATE TABLE {table} AS SELECT device_id, meter, ts, event_id, event_seq, value, "
                       f"value_int, value_scale, meta_id, {ARRIVALS[arrivals]} FROM events "
                       "ORDER BY device_id, meter, ts")
    await conn.execute(f"SELECT create_hypertable('{table}', 'ts', chunk_time_interval => interval '{days} days', "
                       "migrate_data => true, create_default_indexes => false)")
    await conn.execute(f"ALTER TABLE {table} SET (timescaledb.compress, timescaledb.compress_segmentby = "
                       "'device_id, meter', timescaledb.compress_orderby = 'ts', timescaledb.sparse_index = "
                       "'minmax(ts)')")
    # A chunk is full when the data covers its whole range.
    full = [r[0] for r in await (await conn.execute(
        "SELECT format('%%I.%%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks "
        f"WHERE hypertable_name = %s AND range_start >= (SELECT min(ts) FROM {table}) "
        f"AND range_end <= (SELECT max(ts) FROM {table}) + interval '15 minutes'", (table,))).fetchall()]
    counts = {c: int(await scalar(pool, f"SELECT count(*) FROM {c}")) for c in full}
    await conn.execute(f"SELECT count(compress_chunk(c)) FROM show_chunks('{table}') c")
    rows = int(await scalar(pool, f"SELECT count(*) FROM {table}"))
    size = int(await scalar(pool, f"SELECT hypertable_size('{table}')"))
    full_size = 0
    for chunk in full:
        full_size += int(await scalar(pool, "SELECT sum(after_compression_total_bytes) FROM chunk_compression_stats("
                                            "%s) WHERE format('%%I.%%I', chunk_schema, chunk_name) = %s",
                                      table, chunk))
    await conn.execute(f"DROP TABLE {table}")
    return size / rows, full_size / max(1, sum(counts.values())), len(full)


async def chunk_intervals(conn: Any, pool: AsyncConnectionPool, intervals: list[int]) -> None:
    """Print :func:`chunk_interval` for each interval and arrival representation (a batch holds a meter's
    readings of one chunk, at most 1,000: longer chunks fill more of it)."""
    for days in intervals:
        for arrivals in ARRIVALS:
            per_event, per_full, n = await chunk_interval(conn, pool, days, arrivals)
            print(f"events compact in {days}-day chunks, arrival times {arrivals}: hypertable {per_event:.2f} B/event, "
                  f"full chunks only ({n}) {per_full:.2f} B/event")


async def late(conn: Any, table: str, devices: int) -> None:
    """Print the medians of :func:`late_inserts` into ``table``."""
    new, dup = await late_inserts(conn, table, START + timedelta(days=1, hours=3))
    print(f"    late insert of {devices} events into compressed chunks: new {new:.1f} ms, duplicates {dup:.1f} ms "
          "(medians of 5)")


def show(title: str, columns: dict[str, float]) -> None:
    """Print one table's bytes per event by column."""
    print(f"{title}: {sum(columns.values()):.2f} B/event in column values")
    for column, size in sorted(columns.items(), key=lambda kv: -kv[1]):
        print(f"    {column:28s} {size:7.2f}")


async def insert_cost(pool: AsyncConnectionPool, devices: int, batches: int) -> None:
    """Median ms per batch of ``devices`` new readings through DirectInserts, and of the same batch resent."""
    new, dup = [], []
    for n in range(batches):
        at = START + timedelta(minutes=15 * n)
        events = [UsageEvent(device_id=f"dev-{d:06d}", event_id=str(n), meter="energy", ts=at,
                             value=Decimal(n * 200 + d % 97) / 1000, unit="kWh", kind=MeterKind.CUMULATIVE,
                             profile_id="acme-em340", service="electricity", received_at=at + timedelta(seconds=2))
                  for d in range(devices)]
        for out in (new, dup):  # a fresh pipeline resends: the copy meets the stored rows, the staged insert runs
            async with pool.connection() as conn:
                t0 = time.perf_counter()
                async with conn.transaction():
                    got = await DirectInserts().insert(conn, events)
                out.append((time.perf_counter() - t0) * 1000)
                assert len(got) == (devices if out is new else 0)
    print(f"{batches} batches of {devices} readings: new {statistics.median(new):.1f} ms, "
          f"resent {statistics.median(dup):.1f} ms per batch (medians)")


async def run(devices: int, days: int, insert_only: bool, intervals: list[int], intervals_only: bool) -> None:
    """Load, compress, measure the migrated columns and each variant."""
    folder = Path(tempfile.mkdtemp(prefix="usagehub-bench-columns-"))
    folder.chmod(0o755)  # noqa: ASYNC240 — once, before anything runs
    try:
        url = await asyncio.to_thread(lambda: embedded_database_url(folder, timescale=True))
        pool: AsyncConnectionPool = await open_pool(url, max_size=2)
        try:
            await migrate(pool)
            async with pool.connection() as conn:
                await conn.execute("SELECT alter_job(job_id, scheduled => false) FROM "
                                   "timescaledb_information.jobs WHERE job_id >= 1000")
            if insert_only:
                await insert_cost(pool, devices, 60)
                return
            print(f"load {await load(pool, devices, days, True):.0f} s")
            rows = int(await scalar(pool, "SELECT count(*) FROM events"))
            async with pool.connection() as conn:
                await conn.execute("SELECT count(events_compress_chunk(c)) FROM show_chunks('events') c")
                total = int(await scalar(pool, "SELECT hypertable_size('events')"))
                print(f"{rows} events; events compressed as the hub does (0043, 0044, 0047): "
                      f"{total / rows:.2f} B/event (hypertable_size)")
                columns = await compressed_column_bytes(conn, "events", rows)
                show("events compact (0043, 0044, 0047)", columns)
                parts = await compressed_parts(pool, "events", rows)
                print("    compressed chunks: " + ", ".join(f"{k.removeprefix('events.')} {v:.2f}"
                                                          for k, v in parts.items()))
                if intervals_only:
                    await chunk_intervals(conn, pool, intervals)
                    return
                for name, sparse, what in KEYED:
                    await scratch(conn, name, VARIANTS[0][1], key=True, sparse=sparse)
                    size = int(await scalar(pool, f"SELECT hypertable_size('ev_{name}')"))
                    show(f"ev_{name} — {what}; hypertable {size / rows:.2f} B/event",
                         await compressed_column_bytes(conn, f"ev_{name}", rows))
                    if sparse != "":
                        await late(conn, f"ev_{name}", devices)
                for name, select, what in VARIANTS:
                    t0 = time.perf_counter()
                    await scratch(conn, name, select)
                    size = int(await scalar(pool, f"SELECT hypertable_size('ev_{name}')"))
                    show(f"ev_{name} — {what}; hypertable {size / rows:.2f} B/event, "
                         f"{time.perf_counter() - t0:.0f} s", await compressed_column_bytes(conn, f"ev_{name}", rows))
                await chunk_intervals(conn, pool, intervals)
                print("events compact (0043, 0044), last: its late rows stay in the chunks")
                await late(conn, "events", devices)
        finally:
            await pool.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--insert-only", action="store_true", help="time the event writers instead (see above)")
    parser.add_argument("--intervals", default="7,14,21,28", help="chunk intervals to measure, days")
    parser.add_argument("--intervals-only", action="store_true",
                        help="measure the events as compressed and the chunk intervals only")
    args = parser.parse_args()
    asyncio.run(run(args.devices, args.days, args.insert_only, [int(d) for d in args.intervals.split(",")],
                    args.intervals_only))
