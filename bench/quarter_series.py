"""Quarter-hour and hour series read from session_points (today) against the 15-minute rollup dropped in 0030.

ACCOUNTS accounts with a 15-minute meter each for DAYS days; the rollup_15m table is rebuilt beside the points
(as migration 0006 kept it) so both reads run on the same server; both must give the same series; medians of 5.

    .venv/bin/python bench/quarter_series.py [ACCOUNTS] [DAYS]      # defaults: 200 accounts, 31 days
"""

import asyncio
import atexit
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from usagehub.analytics.service import AnalyticsService
from usagehub.core.analytics.buckets import Bucket
from usagehub.storage import rollups
from usagehub.storage.embedded import embedded_database_url
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import open_pool
from usagehub.storage.rollups import Scope, series

ZONES = ["Europe/Berlin", "Asia/Kathmandu", "America/New_York", "UTC"]
# The read of rollups.py before migration 0030, verbatim but for the table.
OLD = '''async def old(conn, tenant, scope, key, product, bucket, since, until):
    extra, params = rollups._filters(scope, key, product, "r")
    local = "(r.bucket_start AT TIME ZONE a.timezone)"
    label = local if bucket is Bucket.QUARTER else f"date_trunc('{rollups._TRUNC[bucket]}', {local})"
    lo, hi = datetime(since.year, since.month, since.day), datetime(until.year, until.month, until.day)
    cur = await conn.execute(
        f"SELECT {label} AS label, sum(r.quantity), sum(r.activity_count), count(DISTINCT r.account_id) "
        "FROM rollup_15m r JOIN accounts a ON a.account_id = r.account_id "
        f"WHERE r.bucket_start >= %s::timestamptz AND r.bucket_start < %s::timestamptz "
        f"AND {local} >= %s AND {local} < %s AND a.tenant = %s{extra} GROUP BY 1 ORDER BY 1",
        [rollups._utc(lo - rollups._ZONE_SLACK), rollups._utc(hi + rollups._ZONE_SLACK), lo, hi, tenant, *params])
    return [rollups._point(row) for row in await rollups.fetch_all(cur)]
'''
ns: dict[str, Any] = {}
exec(OLD, {**rollups.__dict__, "rollups": rollups}, ns)
old = ns['old']

async def med(fn: Any) -> float:
    t = []
    for _ in range(5):
        s = time.perf_counter()
        await fn()
        t.append((time.perf_counter() - s) * 1000)
    return statistics.median(t)

async def main(accounts: int, days: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="usagehub-quarters-"))
    folder.chmod(0o755)  # noqa: ASYNC240 — once, before anything runs
    atexit.register(shutil.rmtree, folder, True)  # registered first: runs after the embedded server stopped
    pool = await open_pool(embedded_database_url(folder), max_size=4)
    await migrate(pool)
    first = datetime(2026, 9, 1, tzinfo=UTC)
    async with pool.connection() as conn:
        async with conn.cursor() as cur, cur.copy("COPY accounts (account_id, market, timezone) FROM STDIN") as cp:
            for i in range(accounts):
                await cp.write_row((f"acc-{i:05d}", "DE", ZONES[i % 4]))
        await conn.execute("ALTER TABLE session_points DISABLE TRIGGER USER")
        async with conn.cursor() as cur, cur.copy(
                "COPY session_points (account_id, service, device_id, product, kind, aggregation, start_ts, "
                "end_ts, value) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["text", "text", "text", "text", "text", "text", "timestamptz", "timestamptz", "numeric"])
            for q in range(days * 96):
                ts = first + timedelta(minutes=15 * q)
                for i in range(accounts):
                    await cp.write_row((f"acc-{i:05d}", "electricity", f"m-{i}", "energy", "usage", "sum", ts,
                                        ts + timedelta(minutes=15), Decimal(i % 9 + q % 5) / 8))
        await conn.execute("ALTER TABLE session_points ENABLE TRIGGER USER")
        await conn.execute(
            "CREATE TABLE rollup_15m AS SELECT account_id, date_bin('15 minutes', start_ts, "
            "timestamptz '2000-01-01 00:00:00+00') AS bucket_start, product, device_id, "
            "coalesce(sum(value) FILTER (WHERE kind = 'usage'), 0) AS quantity, "
            "count(*) FILTER (WHERE kind = 'usage') AS usage_count, "
            "count(*) FILTER (WHERE kind <> 'usage') AS activity_count "
            "FROM session_points WHERE account_id IS NOT NULL GROUP BY 1, 2, 3, 4")
        await conn.execute("ALTER TABLE rollup_15m ADD PRIMARY KEY (account_id, bucket_start, product, device_id)")
        await conn.execute("VACUUM ANALYZE session_points")
        await conn.execute("VACUUM ANALYZE rollup_15m")
        await conn.execute("VACUUM ANALYZE accounts")
    d0 = first.date()
    def day(n: int) -> date:
        return d0 + timedelta(days=n)

    cases = [("account hour, 30 days", Scope.ACCOUNT, "acc-00007", Bucket.HOUR, day(1), day(31)),
             ("account quarter, 1 day", Scope.ACCOUNT, "acc-00007", Bucket.QUARTER, day(3), day(4)),
             ("device hour, 7 days", Scope.DEVICE, "m-7", Bucket.HOUR, day(3), day(10)),
             ("fleet hour, 1 day", Scope.FLEET, None, Bucket.HOUR, day(3), day(4)),
             ("fleet hour, 7 days", Scope.FLEET, None, Bucket.HOUR, day(3), day(10))]
    print(f"{accounts} accounts x {days} days x 96 points")
    for name, scope, key, bucket, since, until in cases:
        async with pool.connection() as conn:
            args = (conn, "default", scope, key, "energy", bucket, since, until)
            new = await series(conn, tenant="default", scope=scope, key=key, product="energy", bucket=bucket,
                               since=since, until=until)
            assert new == await old(*args), name
            t_new = await med(lambda a=args: series(a[0], tenant="default", scope=a[2], key=a[3], product="energy",
                                                    bucket=a[5], since=a[6], until=a[7]))
            t_old = await med(lambda a=args: old(*a))
        print(f"{name:28} rollup_15m {t_old:8.1f} ms   session_points {t_new:8.1f} ms  ({len(new)} buckets)")
    svc = AnalyticsService(pool)
    tn = await med(lambda: svc.refresh_features(d0 + timedelta(days=30)))
    print(f"refresh_features (session_points) {tn:.1f} ms")
    await pool.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200, int(sys.argv[2]) if len(sys.argv) > 2 else 31))
