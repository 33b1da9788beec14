"""Storage benchmark, plain PostgreSQL vs TimescaleDB, on a generated fleet of 15-minute meter readings.

Per storage: bytes per stored event (table + indexes; on TimescaleDB before and after compression), the
account-month billing read (rating's usage_points) p50/p99, the fleet 30-day daily series (rollups.series)
with a raw aggregate over session_points as the baseline, and on TimescaleDB a continuous aggregate
against the trigger-maintained rollups (refresh time, query time, insert cost of the triggers).

Run: .venv/bin/python bench/storage_size.py --devices 700 --days 30      # ~2M events per storage
     .venv/bin/python bench/storage_size.py --devices 5200 --days 100    # the issue's 50M (hours here)
     add --only timescale or --only plain to measure one storage (TimescaleDB needs scripts/timescale),
     --no-compare to skip re-compressing with other segmentby/orderby choices
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from psycopg_pool import AsyncConnectionPool

from usagehub.core.analytics.buckets import Bucket
from usagehub.core.billing import BillingRecord
from usagehub.core.counters import Reading
from usagehub.core.periods import Period
from usagehub.core.tariffs import parse_plans
from usagehub.storage.archive import archive_finished_months
from usagehub.storage.billing import period_by_label
from usagehub.storage.embedded import embedded_database_url
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import open_pool
from usagehub.storage.rating_sums import KEPT_SUMS_SQL, USAGE_SUMS_SQL, summed_usage_items, sums_query
from usagehub.storage.rating_usage import USAGE_POINTS_SQL, usage_points
from usagehub.storage.retention_pack import SETTLE, pack_finished_months
from usagehub.storage.rollups import Scope, series
from usagehub.storage.usage import stored_neighbourhoods

START = datetime(2026, 1, 1, tzinfo=UTC)
RAW_DAILY = ("SELECT (p.start_ts AT TIME ZONE a.timezone)::date AS d, sum(p.value) FROM session_points p "
             "JOIN accounts a ON a.account_id = p.account_id WHERE p.kind = 'usage' "
             "AND p.start_ts >= %s::timestamptz - interval '15 hours' AND p.start_ts < %s::timestamptz + interval "
             "'15 hours' AND (p.start_ts AT TIME ZONE a.timezone)::date >= %s "
             "AND (p.start_ts AT TIME ZONE a.timezone)::date < %s GROUP BY 1 ORDER BY 1")
# One day of readings per device: a register growing 0.15..0.25 kWh per 15 minutes, realistic jitter; arrival
# times to the whole millisecond, as the hub records them (migration 0047).
EVENTS_DAY = """
INSERT INTO events (device_id, meter, ts, event_id, value, meta_id, received_at, ingested_at)
SELECT 'dev-' || lpad(d::text, 6, '0'), 'energy', t, (%(base)s + n)::text,
       round((d %% 97) * 100 + (%(base)s + n) * 0.2 + random()::numeric * 0.05, 3), %(meta)s,
       date_trunc('milliseconds', t + random() * interval '3 s'),
       date_trunc('milliseconds', t + interval '3 s' + random() * interval '1 s')
FROM generate_series(1, %(devices)s) d,
     generate_series(%(day)s::timestamptz, %(day)s::timestamptz + interval '23 hours 45 minutes',
                     interval '15 minutes') WITH ORDINALITY AS g(t, n)"""
# Each point is its whole entry: its entry's ts and quantity are its own end and value, stored NULL (0049).
POINTS_DAY = """
INSERT INTO session_points (account_id, service, device_id, product, kind, aggregation, start_ts, end_ts, value,
                            entry_ref, entry_since, entry_ts, entry_quantity)
SELECT 'acc-' || lpad((d / 2)::text, 6, '0'), 'electricity', 'dev-' || lpad(d::text, 6, '0'), 'energy', 'usage',
       'sum', t - interval '15 minutes', t, v, 'usage:' || (%(base)s + n), t - interval '15 minutes', NULL, NULL
FROM generate_series(1, %(devices)s) d,
     generate_series(%(day)s::timestamptz, %(day)s::timestamptz + interval '23 hours 45 minutes',
                     interval '15 minutes') WITH ORDINALITY AS g(t, n),
     LATERAL (SELECT round(0.15 + random()::numeric * 0.1, 3) AS v) r"""
BILLING_SQL = ("SELECT count(*), sum(value) FROM (SELECT point_id, product, device_id, start_ts, end_ts, value, label, "
               "aggregation FROM session_points WHERE account_id = %s AND kind = 'usage' AND start_ts >= %s "
               "AND start_ts < %s ORDER BY point_id) p")
CAGG = """CREATE MATERIALIZED VIEW bench_points_daily WITH (timescaledb.continuous) AS
SELECT time_bucket('1 day', start_ts) AS day, product, sum(value) AS quantity, count(*) AS n
FROM session_points WHERE kind = 'usage' GROUP BY 1, 2 WITH NO DATA"""


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


async def timed(fn: Callable[[], Awaitable[Any]], runs: int) -> list[float]:
    """Wall times of ``runs`` calls, in milliseconds."""
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


async def scalar(pool: AsyncConnectionPool, query: str, *params: Any) -> Any:
    """The first column of the first row."""
    async with pool.connection() as conn:
        row = await (await conn.execute(query, params)).fetchone()
    return row[0] if row else None


async def load(pool: AsyncConnectionPool, devices: int, days: int, timescale: bool) -> float:
    """Accounts (two devices each, six zones), a day at a time; the load time in seconds."""
    zones = ["Europe/Berlin", "Europe/Lisbon", "Asia/Kathmandu", "America/New_York", "UTC", "Asia/Kolkata"]
    t0 = time.perf_counter()
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO accounts (account_id, market, timezone) SELECT 'acc-' || lpad(a::text, 6, "
                           "'0'), (ARRAY['DE','FR','NP'])[1 + a %% 3], (%s::text[])[1 + a %% 6] "
                           "FROM generate_series(0, %s) a", (zones, devices // 2))
        # unit, kind, profile and service of every reading: one event_meta row (migration 0024)
        meta = (await (await conn.execute(
            "SELECT event_meta_id('kWh', 'cumulative', 'acme-em340', 'electricity')")).fetchone() or [0])[0]
        for day in range(days):
            when = START + timedelta(days=day)
            if when.day == 1 or day == 0:
                await conn.execute("SELECT ensure_event_partition(%s)", (when.date().replace(day=1),))
            args = {"devices": devices, "day": when, "base": day * 96, "meta": meta}
            await conn.execute(EVENTS_DAY, args)
            await conn.execute(POINTS_DAY, args)  # one statement a day: the rollup triggers fire once
    return time.perf_counter() - t0


async def where_bytes_go(pool: AsyncConnectionPool, table: str, rows: int, timescale: bool) -> dict[str, float]:
    """Bytes per row of the heap (with TOAST), of each index, and the average stored size of each column."""
    # A table that is neither partitioned nor a hypertable is its own only part.
    parts = ("SELECT c FROM show_chunks(%(t)s::regclass) c" if timescale else
             "SELECT relid FROM pg_partition_tree(%(t)s::regclass) WHERE isleaf UNION ALL SELECT %(t)s::regclass "
             "WHERE NOT EXISTS (SELECT 1 FROM pg_partition_tree(%(t)s::regclass))")
    out: dict[str, float] = {}
    async with pool.connection() as conn:
        heap = await (await conn.execute(
            f"SELECT sum(pg_table_size(p)) FROM ({parts}) t(p)", {"t": table})).fetchone()
        out[f"{table}.heap+toast"] = int(heap[0] or 0) / rows if heap else 0.0
        # Indexes by the name of the parent index (a partition's inherits it; a chunk's carries it after a prefix).
        idx = await (await conn.execute(
            f"SELECT regexp_replace(coalesce(pi.relname, ci.relname), '^(_hyper_[0-9]+_[0-9]+_chunk_|[0-9]+_)', ''), "
            f"sum(pg_relation_size(i.indexrelid)) FROM ({parts}) t(p) "
            "JOIN pg_index i ON i.indrelid = t.p JOIN pg_class ci ON ci.oid = i.indexrelid "
            "LEFT JOIN pg_inherits h ON h.inhrelid = i.indexrelid LEFT JOIN pg_class pi ON pi.oid = h.inhparent "
            "GROUP BY 1 ORDER BY 1", {"t": table})).fetchall()
        for name, size in idx:
            out[f"{table}.index {name}"] = int(size) / rows
        columns = [str(r[0]) for r in await (await conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum", (table,))).fetchall()]
        sizes = ", ".join(f"avg(coalesce(pg_column_size({c}), 0))" for c in columns)
        got = await (await conn.execute(
            f"SELECT {sizes} FROM {table} TABLESAMPLE SYSTEM (1) REPEATABLE (7)")).fetchone()
        for c, size in zip(columns, got or (), strict=False):
            out[f"{table}.column {c}"] = float(size or 0)
    return out


async def compressed_parts(pool: AsyncConnectionPool, table: str, rows: int) -> dict[str, float]:
    """Bytes per row of a hypertable's compressed chunks: heap, TOAST (the column arrays) and index."""
    async with pool.connection() as conn:
        got = await (await conn.execute(
            "SELECT sum(s.compressed_heap_size), sum(s.compressed_toast_size), sum(s.compressed_index_size), "
            "sum(s.numrows_post_compression) FROM _timescaledb_catalog.compression_chunk_size s "
            "JOIN _timescaledb_catalog.chunk c ON c.id = s.chunk_id "
            "JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id WHERE h.table_name = %s",
            (table,))).fetchone()
    heap, toast, index, segments = (int(v or 0) for v in (got or (0, 0, 0, 0)))
    return {f"{table}.compressed heap": heap / rows, f"{table}.compressed toast": toast / rows,
            f"{table}.compressed index": index / rows, f"{table}.rows per compressed segment": rows / max(1, segments)}


async def table_bytes(pool: AsyncConnectionPool, table: str, timescale: bool) -> int:
    """Heap, TOAST and indexes of a table with all its partitions or chunks."""
    if timescale:
        return int(await scalar(pool, "SELECT hypertable_size(%s::regclass)", table))
    return int(await scalar(pool, "SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) FROM "
                                  "pg_partition_tree(%s::regclass)), pg_total_relation_size(%s::regclass))",
                            table, table))


async def measure(name: str, devices: int, days: int, timescale: bool, compare: bool,
                  breakdown: bool) -> dict[str, float]:
    """Load a fleet into a fresh embedded server and measure it."""
    folder = Path(tempfile.mkdtemp(prefix=f"usagehub-bench-{name}-"))
    folder.chmod(0o755)  # noqa: ASYNC240 — once, before anything runs
    try:
        url = await asyncio.to_thread(lambda: embedded_database_url(folder, timescale=timescale))
        pool = await open_pool(url, max_size=4)
        try:
            return await _measure(pool, devices, days, timescale, compare, breakdown)
        finally:
            await pool.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _measure(pool: AsyncConnectionPool, devices: int, days: int, timescale: bool,
                   compare: bool, breakdown: bool) -> dict[str, float]:
    await migrate(pool)
    if timescale:  # the bench compresses explicitly, at a known moment
        async with pool.connection() as conn:
            await conn.execute("SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs "
                               "WHERE job_id >= 1000")
    out: dict[str, float] = {"load_s": await load(pool, devices, days, timescale)}
    n_events = int(await scalar(pool, "SELECT count(*) FROM events"))
    n_points = int(await scalar(pool, "SELECT count(*) FROM session_points"))
    out |= {"events": n_events, "points": n_points}
    async with pool.connection() as conn:
        await conn.execute("VACUUM ANALYZE events")
        await conn.execute("VACUUM ANALYZE session_points")
        await conn.execute("VACUUM ANALYZE rating_sums")
    out["event_bytes"] = await table_bytes(pool, "events", timescale) / n_events
    out["point_bytes"] = await table_bytes(pool, "session_points", timescale) / n_points
    if breakdown:
        out |= await where_bytes_go(pool, "events", n_events, timescale)
        out |= await where_bytes_go(pool, "session_points", n_points, timescale)
    if not timescale:  # finished months get their indexes rebuilt compactly (storage/retention_pack.py)
        t0 = time.perf_counter()
        await pack_finished_months(pool, START + timedelta(days=days + 31) + SETTLE)
        out["pack_s"] = time.perf_counter() - t0
        out["event_bytes_packed"] = await table_bytes(pool, "events", timescale) / n_events
        if breakdown:
            out |= {f"{k} (packed)": v for k, v in (await where_bytes_go(pool, "events", n_events, False)).items()
                    if ".index " in k}
    if timescale:
        t0 = time.perf_counter()
        for table in ("events", "session_points"):
            await scalar(pool, f"SELECT count({compress_call(table)}) FROM show_chunks('{table}') c")
        out["compress_s"] = time.perf_counter() - t0
        out["event_bytes_compressed"] = await table_bytes(pool, "events", True) / n_events
        out["point_bytes_compressed"] = await table_bytes(pool, "session_points", True) / n_points
        if breakdown:
            out |= await compressed_parts(pool, "events", n_events)
        async with pool.connection() as conn:
            await conn.execute("ANALYZE events")
            await conn.execute("ANALYZE session_points")
    out["rating_sums_bytes_per_point"] = await table_bytes(pool, "rating_sums", False) / n_points
    out["rating_sums_rows_per_point"] = int(await scalar(pool, "SELECT count(*) FROM rating_sums")) / n_points
    out |= await queries(pool, devices, days)
    if not timescale:  # finished months folded into events_archive (storage/archive.py), then the same reads
        out |= await event_reads(pool, devices, days, "")
        t0 = time.perf_counter()
        archived = await archive_finished_months(pool, START + timedelta(days=days + 31) + SETTLE, settle=SETTLE)
        out["archive_s"] = time.perf_counter() - t0
        out["archived_months"] = len(archived)
        async with pool.connection() as conn:
            await conn.execute("VACUUM ANALYZE events_archive")
        kept = await table_bytes(pool, "events", False)
        archive = await table_bytes(pool, "events_archive", False)
        out["event_bytes_archived"] = (kept + archive) / n_events
        out["events_archive_rows"] = int(await scalar(pool, "SELECT count(*) FROM events_archive"))
        if breakdown:
            out |= await where_bytes_go(pool, "events_archive", n_events, False)
        out |= await event_reads(pool, devices, days, " (archived)")
        out |= {f"{k} (archived)": v for k, v in (await queries(pool, devices, days)).items()
                if k.startswith(("billing_explain_kept", "fleet30"))}
    out |= await sums_insert_cost(pool, devices, days)
    if timescale:
        out |= await cagg_vs_triggers(pool, devices, days)
        if compare:
            out |= await other_settings(pool, n_events, n_points)
    return out


def compress_call(table: str) -> str:
    """How a chunk ``c`` of ``table`` is compressed: events in compact forms first (migration 0044), as the hub does."""
    return "events_compress_chunk(c)" if table == "events" else "compress_chunk(c)"


# Alternatives to the settings of migration 0014 (listed first), bytes per row after compressing again.
ALTERNATIVES = {
    "events": [("device_id, meter", "ts, event_id"), ("device_id", "meter, ts, event_id"),
               ("", "device_id, meter, ts, event_id")],
    "session_points": [("account_id, device_id", "start_ts, point_id"), ("account_id", "start_ts, point_id"),
                       ("device_id", "start_ts, point_id")],
}


async def other_settings(pool: AsyncConnectionPool, n_events: int, n_points: int) -> dict[str, float]:
    """Decompress, set other segmentby/orderby, compress again: bytes per row of each choice."""
    out: dict[str, float] = {}
    rows = {"events": n_events, "session_points": n_points}
    async with pool.connection() as conn:
        await conn.execute("DROP MATERIALIZED VIEW IF EXISTS bench_points_daily")
        for table, choices in ALTERNATIVES.items():
            for segmentby, orderby in choices:
                await conn.execute(f"SELECT count(decompress_chunk(c, true)) FROM show_chunks('{table}') c")
                await conn.execute(f"ALTER TABLE {table} SET (timescaledb.compress_segmentby = '{segmentby}', "
                                   f"timescaledb.compress_orderby = '{orderby}')")
                await conn.execute(f"SELECT count({compress_call(table)}) FROM show_chunks('{table}') c")
                size = int(str((await (await conn.execute(f"SELECT hypertable_size('{table}')")).fetchone() or [0])[0]))
                out[f"{table}[{segmentby or '-'}|{orderby}]"] = size / rows[table]
    return out


async def explain_ms(conn: Any, query: str, params: Any) -> float:
    """The server's execution time of ``query`` (EXPLAIN ANALYZE without per-node timing), in ms."""
    row = await (await conn.execute(f"EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {query}", params)).fetchone()
    return float(row[0][0]["Execution Time"])


# A time-of-use plan with hourly windows: the summed read's finest bucket on this fleet (one local hour).
TOU_HOURLY = parse_plans("""
plans:
  - id: bench-tou
    product: energy
    market: DE
    currency: EUR
    unit: kWh
    versions:
      - valid_from: 2026-01-01
        components:
          - type: tou
            windows:
              - {name: night, price: "0.15", days: [mon, tue, wed, thu, fri, sat, sun], start: "00:00", end: "07:00"}
              - {name: day, price: "0.30", days: [mon, tue, wed, thu, fri, sat, sun], start: "07:00", end: "24:00"}
""", "bench")


async def billing_reads(conn: Any, accounts: list[str], month: Period) -> dict[str, list[float]]:
    """Per account-month: the point read (wall, client CPU), its SQL sum, EXPLAIN ANALYZE of the point
    read and of the summed read (hourly and daily buckets), and the summed read into rating items."""
    out: dict[str, list[float]] = defaultdict(list)
    for account in accounts:
        zone = str((await (await conn.execute("SELECT timezone FROM accounts WHERE account_id = %s",
                                              (account,))).fetchone() or ["UTC"])[0])
        month = period_by_label(month.label, ZoneInfo(zone))  # the account's own month, as rating reads it
        start, cpu = time.perf_counter(), time.process_time()
        points = await usage_points(conn, account, month)
        out["billing"].append((time.perf_counter() - start) * 1000)
        out["billing_client_cpu"].append((time.process_time() - cpu) * 1000)
        assert points, account
        start = time.perf_counter()  # the same read summed in the database: its share without the transfer
        total = (await (await conn.execute(BILLING_SQL, (account, month.start, month.end))).fetchone() or [0, 0])[1]
        out["billing_db"].append((time.perf_counter() - start) * 1000)
        out["billing_explain_points"].append(
            await explain_ms(conn, USAGE_POINTS_SQL, (account, month.start, month.end)))
        for name, minutes in (("hour", 60), ("day", 1440)):
            query, args = sums_query(account, month, zone, minutes)
            assert query == KEPT_SUMS_SQL, (zone, minutes)
            out[f"billing_explain_sums_{name}"].append(await explain_ms(conn, USAGE_SUMS_SQL, args))  # before 0026
            out[f"billing_explain_kept_{name}"].append(await explain_ms(conn, KEPT_SUMS_SQL, args))  # rating_sums
        record = BillingRecord(record_id=f"{account}/2026-01/energy", account_id=account, period=month,
                               product="energy", quantity=total, unit="kWh")
        start, cpu = time.perf_counter(), time.process_time()
        items = await summed_usage_items(conn, [record], month, timezone=zone, book=TOU_HOURLY)
        out["billing_summed_tou"].append((time.perf_counter() - start) * 1000)
        out["billing_summed_tou_client_cpu"].append((time.process_time() - cpu) * 1000)
        assert len(items) < len(points), (len(items), len(points))  # summed, not read point by point
        out["billing_summed_rows_per_point"].append(len(items) / len(points))  # Kathmandu (+5:45): 1/2
    return out


async def queries(pool: AsyncConnectionPool, devices: int, days: int) -> dict[str, float]:
    """Account-month billing read p50/p99, fleet 30-day daily series vs a raw aggregate."""
    rng = random.Random(7)
    month = Period(start=START, end=START + timedelta(days=min(days, 31)), label="2026-01")
    accounts = [f"acc-{rng.randrange(devices // 2):06d}" for _ in range(200)]
    out: dict[str, float] = {}
    async with pool.connection() as conn:
        for name, values in (await billing_reads(conn, accounts, month)).items():
            out |= {f"{name}_p50_ms": percentile(values, 50), f"{name}_p99_ms": percentile(values, 99)}
        since = START.date() + timedelta(days=max(0, days - 30))
        until = since + timedelta(days=30)
        fleet = await timed(lambda: series(conn, tenant="default", scope=Scope.FLEET, key=None, product="energy",
                                           bucket=Bucket.DAY, since=since, until=until), 20)
        raw = await timed(lambda: conn.execute(RAW_DAILY, (since, until, since, until)), 3)
    return out | {"fleet30_p50_ms": statistics.median(fleet), "fleet30_p99_ms": percentile(fleet, 99),
                  "fleet30_raw_ms": statistics.median(raw)}


# A device's events in a time range: through events_described as a session's events are read (billing/service.py),
# and with the day bounds the GraphQL events read adds (storage/queries.py) so that only those archived days are read.
DEVICE_READS = {
    "described": ("SELECT * FROM events_described WHERE device_id = %(d)s AND ts >= %(s)s AND ts < %(u)s "
                  "ORDER BY ts, meter, event_id LIMIT 200"),
    "graphql": ("SELECT e.*, m.unit FROM events_all e LEFT JOIN event_meta m USING (meta_id) WHERE e.device_id = %(d)s "
                "AND e.ts >= %(s)s AND e.day >= events_archive_day(%(s)s) AND e.ts < %(u)s "
                "AND e.day <= events_archive_day(%(u)s) ORDER BY e.ts, e.meter, e.event_id LIMIT 200"),
}


async def event_reads(pool: AsyncConnectionPool, devices: int, days: int, suffix: str) -> dict[str, float]:
    """Reads of stored events (as rows, or archived): a device's day and 30 days (the GraphQL events read, p50
    of 40), and the stored neighbours of one late reading in each of 100 registers (p50 of 10)."""
    rng = random.Random(11)
    picks = [(f"dev-{1 + rng.randrange(devices):06d}", START + timedelta(days=rng.randrange(max(1, days - 30))))
             for _ in range(40)]
    out: dict[str, float] = {}
    async with pool.connection() as conn:
        for read, query in DEVICE_READS.items():
            for name, span in (("day", timedelta(days=1)), ("30_days", timedelta(days=30))):
                took = []
                for device, day in picks:
                    t0 = time.perf_counter()
                    await (await conn.execute(query, {"d": device, "s": day, "u": day + span})).fetchall()
                    took.append((time.perf_counter() - t0) * 1000)
                out[f"events_{read}_device_{name}_p50_ms{suffix}"] = statistics.median(took)
        late = {(device, "energy"): [Reading(ts=day + timedelta(hours=5, minutes=7), value=Decimal(1), event_id="x")]
                for device, day in picks[:100]}
        took = []
        for _ in range(10):
            t0 = time.perf_counter()
            got = await stored_neighbourhoods(conn, late)
            took.append((time.perf_counter() - t0) * 1000)
        assert all(len(v) == 2 for v in got.values()), "each late reading has a stored reading on either side"
        out[f"neighbours_{len(late)}_registers_p50_ms{suffix}"] = statistics.median(took)
    return out


# A pipeline-sized statement: one quarter-hour of 200 meters (100 accounts), as a session batch writes.
POINTS_BATCH = """
INSERT INTO session_points (account_id, service, device_id, product, kind, aggregation, start_ts, end_ts, value)
SELECT 'acc-' || lpad((d / 2)::text, 6, '0'), 'electricity', 'dev-' || lpad(d::text, 6, '0'), 'energy', 'usage',
       'sum', %(at)s::timestamptz - interval '15 minutes', %(at)s::timestamptz, round(0.15 + random()::numeric * 0.1, 3)
FROM generate_series(%(first)s, %(first)s + 199) d"""
# analytics_rollup_sql without its rating_sums statement: the triggers as they were before migration 0026.
WITHOUT_SUMS = """
ALTER FUNCTION analytics_rollup_sql(text) RENAME TO analytics_rollup_sql_0026;
CREATE FUNCTION analytics_rollup_sql(source text) RETURNS TABLE (tbl text, stmt text) LANGUAGE sql IMMUTABLE AS
$$ SELECT * FROM analytics_rollup_sql_0026(source) WHERE tbl <> 'rating_sums' $$"""
WITH_SUMS = """
DROP FUNCTION analytics_rollup_sql(text);
ALTER FUNCTION analytics_rollup_sql_0026(text) RENAME TO analytics_rollup_sql"""


async def sums_insert_cost(pool: AsyncConnectionPool, devices: int, days: int) -> dict[str, float]:
    """Insert time of session points with the rating_sums statement of the triggers and without (baseline),
    alternating: a day of the fleet per statement, and 200-point statements (a pipeline batch)."""
    out: dict[str, list[float]] = defaultdict(list)
    day = START + timedelta(days=days + 2)  # after cagg_vs_triggers' two extra days
    async with pool.connection() as conn:
        for round_ in range(4):
            for name in ("with_sums", "without_sums"):
                if name == "without_sums":
                    await conn.execute(WITHOUT_SUMS)
                t0 = time.perf_counter()
                await conn.execute(POINTS_DAY, {"devices": devices, "day": day, "base": 0})
                out[f"day_insert_{name}_s"].append(time.perf_counter() - t0)
                day += timedelta(days=1)
                for i in range(24):
                    args = {"at": day + timedelta(minutes=15 * i), "first": 1 + (200 * (i + round_)) % devices}
                    t0 = time.perf_counter()
                    await conn.execute(POINTS_BATCH, args)
                    out[f"batch200_insert_{name}_ms"].append((time.perf_counter() - t0) * 1000)
                day += timedelta(days=1)
                if name == "without_sums":
                    await conn.execute(WITH_SUMS)
    return {k: statistics.median(v) for k, v in out.items()}


async def cagg_vs_triggers(pool: AsyncConnectionPool, devices: int, days: int) -> dict[str, float]:
    """A continuous aggregate of daily UTC sums against the trigger rollups: refresh, read, insert cost."""
    out: dict[str, float] = {}
    since = START.date() + timedelta(days=max(0, days - 30))
    until = since + timedelta(days=30)
    async with pool.connection() as conn:
        await conn.execute(CAGG)
        t0 = time.perf_counter()
        await conn.execute("CALL refresh_continuous_aggregate('bench_points_daily', NULL, NULL)")
        out["cagg_refresh_s"] = time.perf_counter() - t0
        read = await timed(lambda: conn.execute(
            "SELECT day, quantity FROM bench_points_daily WHERE day >= %s AND day < %s ORDER BY day",
            (since, until)), 20)
        out["cagg_read_ms"] = statistics.median(read)
        # One more day of points (the decompressed tail), with and without the rollup triggers.
        extra = START + timedelta(days=days + 20)  # after sums_insert_cost's days
        args = {"devices": devices, "day": extra, "base": days * 96}
        t0 = time.perf_counter()
        await conn.execute(POINTS_DAY, args)
        out["day_insert_triggers_s"] = time.perf_counter() - t0
        await conn.execute("ALTER TABLE session_points DISABLE TRIGGER USER")
        args = {"devices": devices, "day": extra + timedelta(days=1), "base": days * 96 + 96}
        t0 = time.perf_counter()
        await conn.execute(POINTS_DAY, args)
        out["day_insert_plain_s"] = time.perf_counter() - t0
        await conn.execute("ALTER TABLE session_points ENABLE TRIGGER USER")
        t0 = time.perf_counter()
        await conn.execute("CALL refresh_continuous_aggregate('bench_points_daily', %s, %s)",
                           (extra, extra + timedelta(days=2)))
        out["cagg_refresh_2days_s"] = time.perf_counter() - t0
    return out


def report(name: str, figures: dict[str, float]) -> None:
    """Print one storage's figures."""
    print(f"\n== {name}")
    for key, value in figures.items():
        print(f"  {key:50s} {value:14.2f}" if isinstance(value, float) else f"  {key:50s} {value:14d}")


async def main(devices: int, days: int, only: str | None, compare: bool, breakdown: bool) -> None:
    print(f"fleet: {devices} meters x {days} days x 96 readings = {devices * days * 96:,} events "
          f"(and as many session points), from {START.date()}")
    for name, timescale in (("plain", False), ("timescale", True)):
        if only in (None, name):
            report(name, await measure(name, devices, days, timescale, compare, breakdown))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=700)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--only", choices=["plain", "timescale"])
    parser.add_argument("--no-compare", action="store_true", help="skip the other compression settings")
    parser.add_argument("--breakdown", action="store_true", help="bytes per row of each index and column")
    ns = parser.parse_args()
    asyncio.run(main(ns.devices, ns.days, ns.only, not ns.no_compare, ns.breakdown))
