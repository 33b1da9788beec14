"""Prototype of the plain-PostgreSQL event archive (issue 18): bytes per event of candidate layouts, in SQL.

Loads the storage_size fleet (events only) into a fresh embedded server, then folds every (device, meter,
UTC day) into one row per layout and prints table + TOAST + index bytes per event, and the time to read
one archived day back as rows (median of 50).

Run: nice -n 15 .venv/bin/python bench/archive_layouts.py --devices 200 --days 31

``--settle`` measures the archive itself instead (storage/archive.py, storage/archive_late.py): four months of the
fleet (January, March, May, July) archived alternately by the former TRUNCATE (emulated: the same statements) and
by DELETE, time and WAL each; the bytes a DELETEd partition keeps until ``truncate_emptied``, and its time; reads
of one device's day and of the meter view's last readings, as rows and archived; folding one late reading per
meter on three days.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from psycopg import sql

from bench.storage_size import EVENTS_DAY, START
from usagehub.storage import archive as arch
from usagehub.storage.archive_late import fold_late_rows, truncate_emptied
from usagehub.storage.embedded import embedded_database_url
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import open_pool

_GROUP = "FROM events GROUP BY device_id, meter, (ts AT TIME ZONE 'UTC')::date"
_ORD = "ORDER BY ts, event_id"
LAYOUTS = {
    # one array per column, natural types; TOAST compresses them with pglz
    "arrays": f"""SELECT device_id, meter, (ts AT TIME ZONE 'UTC')::date AS day,
        array_agg(ts {_ORD}) AS ts, array_agg(event_id {_ORD}) AS event_id, array_agg(value {_ORD}) AS value,
        array_agg(meta_id {_ORD}) AS meta_id, array_agg(received_at {_ORD}) AS received_at,
        array_agg(ingested_at {_ORD}) AS ingested_at,
        CASE WHEN bool_or(reset_marker IS NOT NULL) THEN array_agg(reset_marker {_ORD}) END AS reset_marker,
        CASE WHEN bool_or(text_value IS NOT NULL) THEN array_agg(text_value {_ORD}) END AS text_value {_GROUP}""",
    # times as integer microseconds: ts after the day's start, received_at after ts, ingested_at after received_at
    "offsets": f"""SELECT device_id, meter, (ts AT TIME ZONE 'UTC')::date AS day,
        array_agg((extract(epoch FROM ts - date_trunc('day', ts, 'UTC')) * 1e6)::bigint {_ORD}) AS ts_us,
        array_agg(event_id {_ORD}) AS event_id, array_agg(value {_ORD}) AS value,
        array_agg(meta_id {_ORD}) AS meta_id,
        array_agg((extract(epoch FROM received_at - ts) * 1e6)::bigint {_ORD}) AS received_us,
        array_agg((extract(epoch FROM ingested_at - received_at) * 1e6)::bigint {_ORD}) AS ingested_us,
        CASE WHEN bool_or(reset_marker IS NOT NULL) THEN array_agg(reset_marker {_ORD}) END AS reset_marker,
        CASE WHEN bool_or(text_value IS NOT NULL) THEN array_agg(text_value {_ORD}) END AS text_value {_GROUP}""",
    # offsets, and one meta_id per row when the day's readings share it (they do, unless a profile changed)
    "offsets_meta1": f"""SELECT device_id, meter, (ts AT TIME ZONE 'UTC')::date AS day,
        array_agg((extract(epoch FROM ts - date_trunc('day', ts, 'UTC')) * 1e6)::bigint {_ORD}) AS ts_us,
        array_agg(event_id {_ORD}) AS event_id, array_agg(value {_ORD}) AS value,
        min(meta_id) AS meta_id,
        array_agg((extract(epoch FROM received_at - ts) * 1e6)::bigint {_ORD}) AS received_us,
        array_agg((extract(epoch FROM ingested_at - received_at) * 1e6)::bigint {_ORD}) AS ingested_us {_GROUP}""",
    # offsets, ts as the step from the previous reading (a running sum to read back): measured, not adopted
    "offsets_ts_steps": """SELECT device_id, meter, day, array_agg(step ORDER BY ts, event_id) AS ts_step,
        array_agg(event_id ORDER BY ts, event_id) AS event_id, array_agg(value ORDER BY ts, event_id) AS value,
        array_agg(meta_id ORDER BY ts, event_id) AS meta_id, array_agg(r ORDER BY ts, event_id) AS received_us,
        array_agg(g ORDER BY ts, event_id) AS ingested_us
        FROM (SELECT device_id, meter, (ts AT TIME ZONE 'UTC')::date AS day, ts, event_id, value, meta_id,
                     (extract(epoch FROM ts - coalesce(lag(ts) OVER w, date_trunc('day', ts, 'UTC'))) * 1e6)::bigint
                     AS step, (extract(epoch FROM received_at - ts) * 1e6)::bigint AS r,
                     (extract(epoch FROM ingested_at - received_at) * 1e6)::bigint AS g
              FROM events WINDOW w AS (PARTITION BY device_id, meter, (ts AT TIME ZONE 'UTC')::date
                                      ORDER BY ts, event_id)) x
        GROUP BY device_id, meter, day""",
    # everything as one text blob (pglz finds the repeats across columns)
    "one_text": f"""SELECT device_id, meter, (ts AT TIME ZONE 'UTC')::date AS day,
        string_agg(concat_ws(',', extract(epoch FROM ts - date_trunc('day', ts, 'UTC'))::text, event_id,
                   value::text, meta_id::text, (extract(epoch FROM received_at - ts) * 1e6)::bigint::text,
                   (extract(epoch FROM ingested_at - received_at) * 1e6)::bigint::text), ';' {_ORD}) AS blob
        {_GROUP}""",
}
READ_DAY = {  # one archived day of one meter back as rows
    "arrays": "SELECT u.* FROM lay_arrays a, unnest(a.ts, a.event_id, a.value, a.meta_id, a.received_at, "
              "a.ingested_at) u WHERE device_id = %s AND meter = 'energy' AND day = %s",
    "offsets": "SELECT a.day::timestamp AT TIME ZONE 'UTC' + u.t * interval '1 microsecond', u.* FROM lay_offsets a, "
               "unnest(a.ts_us, a.event_id, a.value, a.meta_id, a.received_us, a.ingested_us) u(t, i, v, m, r, g) "
               "WHERE device_id = %s AND meter = 'energy' AND day = %s",
}


async def main(devices: int, days: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="usagehub-archive-layouts-"))
    folder.chmod(0o755)  # noqa: ASYNC240 — once, before anything runs
    try:
        url = await asyncio.to_thread(lambda: embedded_database_url(folder))
        pool = await open_pool(url, max_size=2)
        try:
            await migrate(pool)
            async with pool.connection() as conn:
                meta = (await (await conn.execute(
                    "SELECT event_meta_id('kWh', 'cumulative', 'acme-em340', 'electricity')")).fetchone() or [0])[0]
                for day in range(days):
                    when = START + timedelta(days=day)
                    if when.day == 1 or day == 0:
                        await conn.execute("SELECT ensure_event_partition(%s)", (when.date().replace(day=1),))
                    await conn.execute(EVENTS_DAY, {"devices": devices, "day": when, "base": day * 96, "meta": meta})
                await conn.execute("VACUUM ANALYZE events")
                n = (await (await conn.execute("SELECT count(*) FROM events")).fetchone() or [1])[0]
                size = ("SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) "
                        "FROM pg_partition_tree(%s::regclass)), 0)")
                rows = (await (await conn.execute(size, ("events",))).fetchone() or [0])[0]
                print(f"{n:,} events; rows as loaded: {int(rows) / n:.1f} B/event")
                for name, select in LAYOUTS.items():
                    t0 = time.perf_counter()
                    await conn.execute(f"CREATE TABLE lay_{name} AS {select}")
                    await conn.execute(f"ALTER TABLE lay_{name} ADD PRIMARY KEY (device_id, meter, day)")
                    took = time.perf_counter() - t0
                    await conn.execute(f"VACUUM ANALYZE lay_{name}")
                    got = (await (await conn.execute(f"SELECT pg_total_relation_size('lay_{name}'), "
                                                     f"pg_relation_size('lay_{name}'), pg_indexes_size('lay_{name}')")
                                  ).fetchone()) or (0, 0, 0)
                    print(f"  {name:14s} {int(got[0]) / n:6.1f} B/event (heap {int(got[1]) / n:.1f}, key "
                          f"{int(got[2]) / n:.1f}, TOAST {(int(got[0]) - int(got[1]) - int(got[2])) / n:.1f}); "
                          f"built in {took:.1f} s")
                for name, query in READ_DAY.items():
                    times = []
                    for i in range(50):
                        t0 = time.perf_counter()
                        await (await conn.execute(query, (f"dev-{1 + i % devices:06d}",
                                                          (START + timedelta(days=i % days)).date()))).fetchall()
                        times.append((time.perf_counter() - t0) * 1000)
                    print(f"  read one archived day ({name}): median {statistics.median(times):.2f} ms")
        finally:
            await pool.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_MONTHS = [START.date().replace(month=m) for m in (1, 3, 5, 7)]  # 31 days each; January and July by TRUNCATE
_DAY_READ = ("SELECT * FROM events_all WHERE device_id = %(d)s AND ts >= %(s)s AND ts < %(u)s "
             "AND day >= events_archive_day(%(s)s) AND day <= events_archive_day(%(u)s) ORDER BY ts, meter, event_id")
_DAY_NO_BOUNDS = ("SELECT * FROM events_described WHERE device_id = %(d)s AND ts >= %(s)s AND ts < %(u)s "
                  "ORDER BY ts, meter, event_id")
_LAST = ("SELECT DISTINCT ON (e.meter) e.meter, e.value, e.unit, e.ts, max(e.received_at) OVER (PARTITION BY e.meter), "
         "e.profile_id, e.text_value FROM events_described e WHERE e.device_id = %(d)s "
         "ORDER BY e.meter, e.ts DESC, e.event_id DESC")  # the meter view's last readings (billing/service.py)


async def _truncate_archive(conn: Any, month: Any) -> None:
    """The archive as it was before migration 0045: the same statements, TRUNCATE instead of DELETE."""
    name = f"events_{month:%Y_%m}"
    part = sql.Identifier(name)
    async with conn.transaction():
        await conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(part))
        n = (await (await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(part))).fetchone())[0]
        rows = (await conn.execute(sql.SQL(arch._FOLD).format(part=part))).rowcount
        await conn.execute(sql.SQL("TRUNCATE {}").format(part))
        await conn.execute(sql.SQL("CREATE TRIGGER events_archive_guard BEFORE INSERT ON {} FOR EACH ROW "
                                   "EXECUTE FUNCTION events_archive_guard()").format(part))
        await conn.execute("INSERT INTO events_archived (partition, month_start, month_end, events, rows, "
                           "bytes_before, bytes_after) VALUES (%s, %s, %s, %s, %s, 0, 0)",
                           (name, *arch._bounds(month), n, rows))


async def _reads(conn: Any, devices: int, label: str, month: int = 1) -> None:
    """Medians of 40: a device's day of ``month`` (day bounds, and without), and its meters' last readings."""
    for name, query in (("day read, day bounds (GraphQL events)", _DAY_READ),
                        ("day read, no day bounds (events_described)", _DAY_NO_BOUNDS),
                        ("meter view last readings (no bounds)", _LAST)):
        times = []
        for i in range(40):
            s = START.replace(month=month) + timedelta(days=1 + i % 28)
            params = {"d": f"dev-{1 + (i * 7) % devices:06d}", "s": s, "u": s + timedelta(days=1)}
            t0 = time.perf_counter()
            await (await conn.execute(query, params)).fetchall()
            times.append((time.perf_counter() - t0) * 1000)
        print(f"  {label:38s} {name:44s} median {statistics.median(times):6.2f} ms")


async def _wal(conn: Any) -> int:
    return int((await (await conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")).fetchone())[0])


async def settle(devices: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="usagehub-archive-settle-"))
    folder.chmod(0o755)  # noqa: ASYNC240 — once, before anything runs
    try:
        url = await asyncio.to_thread(lambda: embedded_database_url(folder))
        pool = await open_pool(url, max_size=2)
        try:
            await migrate(pool)
            async with pool.connection() as conn:
                meta = (await (await conn.execute(
                    "SELECT event_meta_id('kWh', 'cumulative', 'acme-em340', 'electricity')")).fetchone() or [0])[0]
                for month in _MONTHS:
                    await conn.execute("SELECT ensure_event_partition(%s)", (month,))
                    for day in range(31):
                        when = START.replace(month=month.month) + timedelta(days=day)
                        await conn.execute(EVENTS_DAY, {"devices": devices, "day": when, "base": day * 96,
                                                        "meta": meta})
                await conn.execute("VACUUM ANALYZE events")
                per_month = (await (await conn.execute("SELECT count(*) FROM events_2026_01")).fetchone())[0]
                print(f"{devices} meters, {per_month:,} events a month, 4 months")
                await _reads(conn, devices, "rows:")
                for month, how in zip(_MONTHS, ("truncate", "delete", "delete", "truncate"), strict=True):
                    name = f"events_{month:%Y_%m}"
                    size = (await (await conn.execute("SELECT pg_total_relation_size(%s)", (name,))).fetchone())[0]
                    wal, t0 = await _wal(conn), time.perf_counter()
                    if how == "truncate":
                        await _truncate_archive(conn, month)
                    else:
                        assert await arch.archive_month(conn, month)
                    took, wal = time.perf_counter() - t0, await _wal(conn) - wal
                    kept = (await (await conn.execute("SELECT pg_total_relation_size(%s)", (name,))).fetchone())[0]
                    line = (f"  archive {name} by {how:8s}: {took:5.2f} s, WAL {wal / 2**20:6.1f} MiB, partition "
                            f"{size / 2**20:.1f} -> {kept / 2**20:.1f} MiB")
                    if how == "delete":
                        if month.month == 3:  # reads of a deleted month before its TRUNCATE (dead rows)
                            print(line)
                            line = "   "
                            await _reads(conn, devices, "March deleted, not truncated:", 3)
                        t0 = time.perf_counter()
                        assert await truncate_emptied(conn, month)
                        gone = (await (await conn.execute("SELECT pg_total_relation_size(%s)", (name,))).fetchone())[0]
                        ms = (time.perf_counter() - t0) * 1000
                        line += f"; truncate_emptied {ms:.0f} ms -> {gone / 2**20:.1f} MiB"
                    print(line)
                await conn.execute("VACUUM ANALYZE events_archive")
                await _reads(conn, devices, "archived (4 months, 124 days):")
                await _reads(conn, devices, "March archived, truncated:", 3)
                for day in (3, 10, 17):  # one late reading per meter on three archived days of January
                    late = START + timedelta(days=day, minutes=7)
                    await conn.execute(EVENTS_DAY.replace("interval '23 hours 45 minutes'", "interval '0 s'"),
                                       {"devices": devices, "day": late, "base": 10_000 + day, "meta": meta})
                t0 = time.perf_counter()
                folded = await fold_late_rows(conn, _MONTHS[0])
                print(f"  fold {folded} late rows into their archived days: {(time.perf_counter() - t0):.2f} s")
        finally:
            await pool.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--days", type=int, default=31)
    parser.add_argument("--settle", action="store_true", help="measure archiving, truncating, folding, reads")
    ns = parser.parse_args()
    asyncio.run(settle(ns.devices) if ns.settle else main(ns.devices, ns.days))
