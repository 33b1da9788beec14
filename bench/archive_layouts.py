"""Prototype of the plain-PostgreSQL event archive (issue 18): bytes per event of candidate layouts, in SQL.

Loads the storage_size fleet (events only) into a fresh embedded server, then folds every (device, meter,
UTC day) into one row per layout and prints table + TOAST + index bytes per event, and the time to read
one archived day back as rows (median of 50).

Run: nice -n 15 .venv/bin/python bench/archive_layouts.py --devices 200 --days 31
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

from bench.storage_size import EVENTS_DAY, START
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--days", type=int, default=31)
    ns = parser.parse_args()
    asyncio.run(main(ns.devices, ns.days))
