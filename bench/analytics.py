"""Analytics benchmark: one million account-days; fleet series and segment evaluation vs raw session_points.

Run: .venv/bin/python bench/analytics.py [--accounts 2740 --days 365]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from usagehub.analytics.service import AnalyticsService
from usagehub.core.analytics.buckets import Bucket
from usagehub.storage.embedded import embedded_database_url
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import open_pool
from usagehub.storage.rollups import Scope

ZONES = ["Europe/Berlin", "Europe/Lisbon", "Asia/Kathmandu", "America/New_York", "Australia/Adelaide", "UTC"]
NAIVE = ("SELECT (p.start_ts AT TIME ZONE a.timezone)::date AS d, sum(p.value) FROM session_points p "
         "JOIN accounts a ON a.account_id = p.account_id WHERE p.kind = 'usage' AND a.tenant = 'default' "
         "AND p.start_ts >= %s::timestamptz - interval '15 hours' "
         "AND p.start_ts < %s::timestamptz + interval '15 hours' "
         "AND (p.start_ts AT TIME ZONE a.timezone)::date >= %s AND (p.start_ts AT TIME ZONE a.timezone)::date < %s "
         "GROUP BY 1 ORDER BY 1")


async def median_of_3(fn: Callable[[], Awaitable[Any]]) -> float:
    """Median wall time of three runs, in milliseconds."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


async def main(accounts: int, days: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="usagehub-bench-"))
    folder.chmod(0o755)  # noqa: ASYNC240 — once, before anything runs
    pool = await open_pool(embedded_database_url(folder), max_size=4)
    await migrate(pool)
    first = date(2025, 11, 1)
    last = first + timedelta(days=days - 1)
    async with pool.connection() as conn:
        async with conn.cursor() as cur, cur.copy("COPY accounts (account_id, market, timezone) FROM STDIN") as cp:
            for i in range(accounts):
                await cp.write_row((f"acc-{i:06d}", ["DE", "FR", "NP"][i % 3], ZONES[i % len(ZONES)]))
        # Bulk load: raw points with the triggers off, then one set-based rollup rebuild.
        await conn.execute("ALTER TABLE session_points DISABLE TRIGGER USER")
        t0 = time.perf_counter()
        async with conn.cursor() as cur, cur.copy(
                "COPY session_points (account_id, service, device_id, product, kind, aggregation, start_ts, "
                "end_ts, value) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["text", "text", "text", "text", "text", "text", "timestamptz", "timestamptz", "numeric"])
            for d in range(days):
                base = datetime(first.year, first.month, first.day, tzinfo=UTC) + timedelta(days=d)
                for i in range(accounts):
                    ts = base + timedelta(hours=(i * 7 + d) % 24)
                    value = Decimal((i % 50) + (d % 7) * 3 + (10 if d > days - 30 and i % 4 == 0 else 0)) / 4
                    await cp.write_row((f"acc-{i:06d}", "electricity", f"m-{i}", "energy", "usage", "sum", ts, ts,
                                        value))
        copy_s = time.perf_counter() - t0
        await conn.execute("ALTER TABLE session_points ENABLE TRIGGER USER")
        t0 = time.perf_counter()
        await conn.execute("SELECT analytics_rebuild_rollups()")
        rebuild_s = time.perf_counter() - t0
        await conn.execute("VACUUM ANALYZE rollup_daily")
        await conn.execute("VACUUM ANALYZE session_points")
        n = (await (await conn.execute("SELECT count(*) FROM rollup_daily")).fetchone())[0]  # type: ignore[index]
    service = AnalyticsService(pool)
    print(f"account-days in rollup_daily: {n:,} ({accounts} accounts x {days} days); "
          f"COPY raw {copy_s:.1f} s, rollup rebuild {rebuild_s:.1f} s")

    async def fleet(span: int) -> None:
        await service.series(tenant="default", scope=Scope.FLEET, key=None, product="energy", bucket=Bucket.DAY,
                             since=last - timedelta(days=span - 1), until=last + timedelta(days=1))

    async def naive(span: int) -> None:
        since, until = last - timedelta(days=span - 1), last + timedelta(days=1)
        async with pool.connection() as conn:
            await (await conn.execute(NAIVE, (since.isoformat(), until.isoformat(), since, until))).fetchall()

    rows = [("fleet daily series, 30 days", await median_of_3(lambda: fleet(30)), await median_of_3(lambda: naive(30))),
            ("fleet daily series, 365 days", await median_of_3(lambda: fleet(365)),
             await median_of_3(lambda: naive(365)))]
    refresh = await median_of_3(lambda: service.refresh_features(last))
    seg = await service.save_segment(tenant="default", name="bench", product="energy",
                                     rule="evening_share >= 0.3 and mom_trend >= 0.1 or avg_daily > 12")
    clock = iter(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i) for i in range(10))
    evaluate = await median_of_3(lambda: service.evaluate("default", seg.segment_id, next(clock)))
    members = (await service.segment("default", seg.segment_id)).members
    print(f"{'query':34} {'rollups ms':>11} {'raw points ms':>14} {'speed-up':>9}")
    for name, fast, slow in rows:
        print(f"{name:34} {fast:11.1f} {slow:14.1f} {slow / fast:8.1f}x")
    print(f"refresh_features over the window    {refresh:11.1f}   ({accounts} accounts)")
    print(f"segment evaluation (rule over features) {evaluate:7.1f}   ({members} members)")
    await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, default=2740)
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args()
    asyncio.run(main(args.accounts, args.days))
