"""The events insert with event_meta (migration 0024) against the insert it replaced, in one database.

Times ``storage.events.insert_events`` on batches of new readings (the pipeline's batch size) and, as the
baseline measured in the same run, the former statement (every row with its unit, kind, profile and
service) into a table of the former shape; prints ms per batch and bytes per row of both tables.

Run: .venv/bin/python bench/event_insert.py --batches 40 --size 2000
(plain PostgreSQL: the former shape is a plain table there too, unlike a hypertable's chunks)
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from usagehub.core.events import MeterKind, UsageEvent
from usagehub.storage.embedded import embedded_database_url
from usagehub.storage.events import insert_events
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import Connection, open_pool

START = datetime(2026, 1, 1, tzinfo=UTC)
FORMER = """CREATE TABLE events_former (
    device_id text NOT NULL, meter text NOT NULL, ts timestamptz NOT NULL, event_id text NOT NULL,
    value numeric NOT NULL, unit text NOT NULL, kind text NOT NULL, profile_id text NOT NULL,
    service text NOT NULL, received_at timestamptz NOT NULL, reset_marker text, text_value text,
    ingested_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (device_id, meter, ts, event_id))"""
COLUMNS = ("device_id, meter, ts, event_id, value, unit, kind, profile_id, service, received_at, reset_marker, "
           "text_value")
FORMER_INSERT = (f"INSERT INTO events_former ({COLUMNS}) SELECT DISTINCT ON (device_id, meter, ts, event_id) "
                 f"{COLUMNS} FROM events_stage ORDER BY device_id, meter, ts, event_id, ord "
                 "ON CONFLICT DO NOTHING RETURNING device_id, meter, ts, event_id")


def batch(n: int, size: int) -> list[UsageEvent]:
    """``size`` readings of 15-minute meters, batch ``n`` (a fleet's quarter-hour, several profiles)."""
    ts = START + timedelta(minutes=15 * n)
    return [UsageEvent(device_id=f"dev-{d:06d}", event_id=str(n), meter="energy", ts=ts,
                       value=Decimal(n * 200 + d % 97) / 1000, unit="kWh", kind=MeterKind.CUMULATIVE,
                       profile_id=f"acme-em34{d % 3}", service="electricity", received_at=ts + timedelta(seconds=2))
            for d in range(size)]


async def former(conn: Connection, events: list[UsageEvent]) -> int:
    """The insert before 0024: stage by COPY, then every row with its text columns."""
    await conn.execute("CREATE TEMP TABLE IF NOT EXISTS events_stage (device_id text, meter text, ts timestamptz, "
                       "event_id text, value numeric, unit text, kind text, profile_id text, service text, "
                       "received_at timestamptz, reset_marker text, text_value text, ord int) ON COMMIT DELETE ROWS")
    async with conn.cursor() as cur:
        async with cur.copy(f"COPY events_stage ({COLUMNS}, ord) FROM STDIN") as copy:
            for i, e in enumerate(events):
                await copy.write_row((e.device_id, e.meter, e.ts, e.event_id, e.value, e.unit, e.kind.value,
                                      e.profile_id, e.service, e.received_at, e.reset_marker, e.text_value, i))
        await cur.execute(FORMER_INSERT)
        return len(await cur.fetchall())


async def main(batches: int, size: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="usagehub-bench-insert-"))
    folder.chmod(0o755)  # noqa: ASYNC240 — once, before anything runs
    try:
        url = await asyncio.to_thread(lambda: embedded_database_url(folder, timescale=False))
        pool = await open_pool(url, max_size=2)
        try:
            await migrate(pool)
            async with pool.connection() as conn:
                await conn.execute(FORMER)
                await conn.execute("SELECT ensure_event_partition(%s)", (START.date(),))
            now: list[float] = []
            old: list[float] = []
            for n in range(batches):  # alternate, so both see the same load
                events = batch(n, size)
                async with pool.connection() as conn:
                    t0 = time.perf_counter()
                    async with conn.transaction():
                        assert len(await insert_events(conn, events)) == size
                    now.append((time.perf_counter() - t0) * 1000)
                    t0 = time.perf_counter()
                    async with conn.transaction():
                        assert await former(conn, events) == size
                    old.append((time.perf_counter() - t0) * 1000)
            async with pool.connection() as conn:
                await conn.execute("VACUUM ANALYZE events")
                await conn.execute("VACUUM ANALYZE events_former")
                heap = [(await (await conn.execute(
                    f"SELECT coalesce((SELECT sum(pg_table_size(relid)) FROM pg_partition_tree('{t}')), "
                    f"pg_table_size('{t}')) / %s",
                    (batches * size,))).fetchone() or [0])[0] for t in ("events", "events_former")]
        finally:
            await pool.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{batches} batches of {size} new readings, plain PostgreSQL")
    print(f"  insert with event_meta (0024)   median {statistics.median(now):7.1f} ms   min {min(now):7.1f} ms"
          f"   heap {float(heap[0]):6.1f} B/row")
    print(f"  former insert (baseline)        median {statistics.median(old):7.1f} ms   min {min(old):7.1f} ms"
          f"   heap {float(heap[1]):6.1f} B/row")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--size", type=int, default=2000)
    ns = parser.parse_args()
    asyncio.run(main(ns.batches, ns.size))
