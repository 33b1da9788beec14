"""Where the session-point COPY's PostgreSQL time goes: its triggers and each index, in one database.

Copies fleet-like batches of usage points (a meter per account, 15-minute pieces, 40 accounts in 4 zones,
a day of event time per batch) with ``storage.sessions.copy_points`` into a ``session_points`` that already
holds ``--preload`` points, each batch in a transaction that is rolled back (the table stays the same size),
under seven variants alternated batch by batch (so all see the same load):
  full                 as migrated (rollup + rating_sums statement triggers, pkey, covering, device_end);
  no triggers          ``DISABLE TRIGGER USER`` in the transaction;
  trigger: rollups only / rating_sums only   the rollup trigger running one of its two statements
                       (``analytics_rollup_sql`` swapped for a filter of itself in the transaction);
  no device_end index  the (device_id, end_ts) index dropped in the transaction;
  no covering index    the (account_id, start_ts, service) INCLUDE (...) index dropped in the transaction;
  heap + pkey only     both of the above, no triggers.
Prints the median and minimum ms per batch and us per point of each. Plain PostgreSQL.

``--updates N``: then the rating_sums fillfactor (migration 0038) on committed batches that update its rows:
each batch holds one quarter-hour of every hour of a day for every account (960 points, one per hour row),
so a day's first batch inserts the hour rows and its three later batches update them. For fillfactor 100
(before 0038) and 70, alternated N times on emptied tables, N days each: ms per updating batch (median) and
the share of rating_sums updates that were HOT.

Run: nice -n 15 .venv/bin/python bench/point_copy.py --batches 15 --preload 200000
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

from usagehub.core.allocation import Point, PointKind
from usagehub.core.events import Aggregation
from usagehub.storage.embedded import embedded_database_url
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import Connection, open_pool
from usagehub.storage.sessions import Origin, copy_points

START = datetime(2026, 9, 1, tzinfo=UTC)
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"]
ACCOUNTS = 40
PER_DAY = 96


def _only(table: str) -> list[str]:
    """The rollup trigger running only its statement for ``table`` (the function swapped in the transaction)."""
    return ["ALTER FUNCTION analytics_rollup_sql(text) RENAME TO analytics_rollup_sql_all",
            "CREATE FUNCTION analytics_rollup_sql(source text) RETURNS TABLE (tbl text, stmt text) LANGUAGE sql "
            f"AS $$ SELECT * FROM analytics_rollup_sql_all(source) WHERE tbl = '{table}' $$"]


VARIANTS: dict[str, list[str]] = {
    "full": [],
    "no triggers": ["ALTER TABLE session_points DISABLE TRIGGER USER"],
    "trigger: rollups only": _only("rollup_daily"),
    "trigger: rating_sums only": _only("rating_sums"),
    "no device_end index": ["DROP INDEX session_points_device_end"],
    "no covering index": ["DROP INDEX session_points_account_time"],
    "heap + pkey only": ["ALTER TABLE session_points DISABLE TRIGGER USER", "DROP INDEX session_points_device_end",
                         "DROP INDEX session_points_account_time"],
}


def day_points(day: int, quarters: range = range(PER_DAY)) -> list[tuple[Point, Origin | None]]:
    """A day of 15-minute usage pieces of one meter per account (the fleet's bulk)."""
    out: list[tuple[Point, Origin | None]] = []
    for a in range(ACCOUNTS):
        for q in quarters:
            start = START + timedelta(days=day, minutes=15 * q)
            end = start + timedelta(minutes=15)
            point = Point(account_id=f"a{a:02d}", service="electricity", device_id=f"m{a:02d}", product="energy",
                          kind=PointKind.USAGE, aggregation=Aggregation.SUM, start=start, end=end,
                          value=Decimal(q % 7 + 1) / 10)
            out.append((point, (f"m{a:02d}/energy", start, end, point.value)))
    return out


async def timed(conn: Connection, points: list[tuple[Point, Origin | None]], setup: list[str]) -> float:
    """ms of one COPY under ``setup``, rolled back."""
    await conn.execute("BEGIN")
    try:
        for stmt in setup:
            await conn.execute(stmt)
        t0 = time.perf_counter()
        await copy_points(conn, points)
        return (time.perf_counter() - t0) * 1000
    finally:
        await conn.execute("ROLLBACK")


async def updates(conn: Connection, rounds: int, days: int) -> dict[int, tuple[list[float], float]]:
    """ms per updating batch and the HOT share of rating_sums updates, per fillfactor."""
    out: dict[int, tuple[list[float], float]] = {100: ([], 0.0), 70: ([], 0.0)}
    hot = {100: [0, 0], 70: [0, 0]}
    for _ in range(rounds):
        for ff in out:
            await conn.execute("TRUNCATE session_points, rating_sums, rollup_daily, rollup_fleet_slots")
            await conn.execute(f"ALTER TABLE rating_sums SET (fillfactor = {ff})")
            before = await _upd(conn)
            for day in range(days):
                for k in range(4):
                    points = day_points(day, range(k, PER_DAY, 4))
                    t0 = time.perf_counter()
                    async with conn.transaction():
                        await copy_points(conn, points)
                    if k:
                        out[ff][0].append((time.perf_counter() - t0) * 1000)
            after = await _upd(conn)
            hot[ff][0] += after[0] - before[0]
            hot[ff][1] += after[1] - before[1]
    return {ff: (ms, hot[ff][1] / max(hot[ff][0], 1)) for ff, (ms, _) in out.items()}


async def _upd(conn: Connection) -> tuple[int, int]:
    await asyncio.sleep(0.7)  # stats flush: pgstat_report_stat runs at most every PGSTAT_MIN_INTERVAL (1 s)
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    row = await (await conn.execute(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'rating_sums'")).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def main(batches: int, preload: int, rounds: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="usagehub-bench-pointcopy-"))
    folder.chmod(0o755)  # noqa: ASYNC240 — once, before anything runs
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    size = ACCOUNTS * PER_DAY
    try:
        url = await asyncio.to_thread(lambda: embedded_database_url(folder, timescale=False))
        pool = await open_pool(url, max_size=2)
        try:
            await migrate(pool)
            async with pool.connection() as conn:
                await conn.set_autocommit(True)
                await conn.execute(
                    "INSERT INTO accounts (account_id, timezone) SELECT 'a' || lpad(i::text, 2, '0'), "
                    "(%s::text[])[i %% 4 + 1] FROM generate_series(0, %s) i", (ZONES, ACCOUNTS - 1))
                for day in range(preload // size):
                    async with conn.transaction():
                        await copy_points(conn, day_points(day))
                await conn.execute("VACUUM ANALYZE session_points")
                for n in range(batches):
                    points = day_points(1000 + n)
                    for name, setup in VARIANTS.items():
                        times[name].append(await timed(conn, points, setup))
                upd = await updates(conn, rounds, 14) if rounds else {}
        finally:
            await pool.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{batches} batches of {size} points into {preload // size * size} stored, plain PostgreSQL")
    for name, ms in times.items():
        med = statistics.median(ms)
        print(f"  {name:22s} median {med:7.1f} ms ({1000 * med / size:5.1f} us/point)   min {min(ms):7.1f} ms")
    for ff, (ms, share) in upd.items():
        print(f"  rating_sums fillfactor {ff:3d}: updating batch of {ACCOUNTS * 24} points median "
              f"{statistics.median(ms):6.1f} ms, min {min(ms):6.1f} ms ({len(ms)} batches), HOT updates {share:.0%}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--preload", type=int, default=200_000)
    parser.add_argument("--updates", type=int, default=0)
    ns = parser.parse_args()
    asyncio.run(main(ns.batches, ns.preload, ns.updates))
