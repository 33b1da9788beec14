"""The adjustment lines of an invoice (a billed month re-rated with its late usage): kept sums against every point.

Loads the fleet of bench/storage_size.py (15-minute points, accounts of two meters in six zones) into a fresh
embedded server, bills each sampled account's January as it stood three days before the end of the loaded
data (the points of those days are late: they were written after the bill, as the loader writes a day at a
time), and puts the rest into a February adjustment. Then, per account-month and plan book (hourly
time-of-use; graduated, daily), it rates the adjustment both ways in the same run: from the kept sums and
the tail of late points (storage.rating_adjust.adjustment_lines) and from every point (the baseline,
storage.rating_usage.point_adjustment_lines), checks that the lines are equal, and prints wall time and
client CPU p50/p99, and the server time of the tail query against the point read.

Run: .venv/bin/python bench/adjustment_read.py --devices 200 --days 31          # ~1-2 min here
     add --timescale to run it on TimescaleDB (needs scripts/timescale)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from psycopg_pool import AsyncConnectionPool

sys.path.insert(0, str(Path(__file__).resolve().parent))

from storage_size import START, TOU_HOURLY, explain_ms, load, percentile

from usagehub.core.billing import RecordKind
from usagehub.core.rating import Account
from usagehub.core.tariffs import PlanBook, parse_plans
from usagehub.core.vat import parse_vat_table
from usagehub.storage.billing import period_by_label
from usagehub.storage.embedded import embedded_database_url
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import open_pool
from usagehub.storage.rating_adjust import TAIL_SQL, adjustment_lines
from usagehub.storage.rating_catalog import shipped_vat_text
from usagehub.storage.rating_sums import bucket_minutes, sums_query
from usagehub.storage.rating_usage import USAGE_POINTS_SQL, period_records, point_adjustment_lines

GRADUATED = parse_plans("""
plans:
  - id: bench-graduated
    product: energy
    market: DE
    currency: EUR
    unit: kWh
    versions:
      - valid_from: 2026-01-01
        components:
          - {type: graduated, tiers: [{up_to: 500, price: "0.30"}, {up_to: 1000, price: "0.25"}, {price: "0.20"}]}
""", "bench")
BOOKS: dict[str, PlanBook] = {"tou_hourly": TOU_HOURLY, "graduated_daily": GRADUATED}


async def bill_with_late_days(conn: object, account: str, zone: str, late_from: object) -> None:
    """January billed as it stood before ``late_from`` (storage order: earlier days), the rest adjusted."""
    jan, feb = (period_by_label(label, ZoneInfo(zone)) for label in ("2026-01", "2026-02"))
    row = await (await conn.execute(  # type: ignore[attr-defined]
        "SELECT coalesce(sum(value) FILTER (WHERE start_ts < %s), 0), coalesce(sum(value), 0) FROM session_points "
        "WHERE account_id = %s AND kind = 'usage' AND start_ts >= %s AND start_ts < %s",
        (late_from, account, jan.start, jan.end))).fetchone()
    billed, total = Decimal(row[0]), Decimal(row[1])
    for record, quantity, kind, adjusts, period in (
            (f"{account}/2026-01/energy", billed, "regular", None, jan),
            (f"{account}/2026-01/energy/adj/2026-02", total - billed, "adjustment", f"{account}/2026-01/energy", feb)):
        await conn.execute(  # type: ignore[attr-defined]
            "INSERT INTO billing_records (record_id, account_id, period_start, period_end, period_label, product, "
            "quantity, unit, status, kind, adjusts, version) VALUES (%s, %s, %s, %s, %s, 'energy', %s, 'kWh', "
            "'billed', %s, %s, 1)", (record, account, period.start, period.end, period.label, quantity, kind, adjusts))


async def measure(pool: AsyncConnectionPool, devices: int, days: int, accounts: int,
                  explain: bool = False) -> dict[str, list[float]]:
    """Both reads of every sampled account's adjustment, per plan book."""
    vat = parse_vat_table(shipped_vat_text(), "bench")
    late_from = START + timedelta(days=min(days, 31) - 3)
    rng = random.Random(7)
    sample = sorted({f"acc-{rng.randrange(devices // 2):06d}" for _ in range(accounts)})
    out: dict[str, list[float]] = defaultdict(list)
    async with pool.connection() as conn:
        zones = dict(await (await conn.execute("SELECT account_id, timezone FROM accounts")).fetchall())
        for account in sample:
            await bill_with_late_days(conn, account, zones[account], late_from)
        await conn.execute("ANALYZE billing_records")
        for account_id in sample:
            zone = zones[account_id]
            feb, jan = period_by_label("2026-02", ZoneInfo(zone)), period_by_label("2026-01", ZoneInfo(zone))
            adjustments = [r for r in await period_records(conn, account_id, feb) if r.kind is RecordKind.ADJUSTMENT]
            account = Account(account_id=account_id, market="DE", currency="EUR", timezone=zone)
            for name, book in BOOKS.items():
                start, cpu = time.perf_counter(), time.process_time()
                kept = await adjustment_lines(conn, account, feb, adjustments, book, vat)
                out[f"{name} kept: wall ms"].append((time.perf_counter() - start) * 1000)
                out[f"{name} kept: client CPU ms"].append((time.process_time() - cpu) * 1000)
                start, cpu = time.perf_counter(), time.process_time()
                every = await point_adjustment_lines(conn, account, feb, adjustments, book, vat)
                out[f"{name} points (baseline): wall ms"].append((time.perf_counter() - start) * 1000)
                out[f"{name} points (baseline): client CPU ms"].append((time.process_time() - cpu) * 1000)
                assert kept == every and kept, (account_id, name)
            _, args = sums_query(account_id, jan, zone, bucket_minutes(TOU_HOURLY))
            billed = (await period_records(conn, account_id, jan))[0].quantity  # as the bill had it
            out["server: tail query ms"].append(await explain_ms(
                conn, TAIL_SQL, args | {"products": ["energy"], "billed": [billed]}))
            out["server: point read ms"].append(await explain_ms(conn, USAGE_POINTS_SQL,
                                                                 (account_id, jan.start, jan.end)))
            tail = await (await conn.execute(TAIL_SQL, args | {"products": ["energy"], "billed": [billed]})).fetchall()
            out["tail points shipped"].append(float(len(tail)))
        if explain:  # the plan of the last account's tail query
            plan = await (await conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {TAIL_SQL}", args | {
                "products": ["energy"], "billed": [billed]})).fetchall()
            print("\n".join(str(r[0]) for r in plan))
    return out


async def run(devices: int, days: int, accounts: int, timescale: bool, explain: bool) -> None:
    """Load, bill, measure, print."""
    folder = Path(tempfile.mkdtemp(prefix="usagehub-bench-adjust-"))
    folder.chmod(0o755)  # noqa: ASYNC240 — once, before anything runs
    try:
        url = await asyncio.to_thread(lambda: embedded_database_url(folder, timescale=timescale))
        pool = await open_pool(url, max_size=2)
        try:
            await migrate(pool)
            print(f"{'TimescaleDB' if timescale else 'plain PostgreSQL'}: {devices} meters x {days} days, "
                  f"load {await load(pool, devices, days, timescale):.0f} s")
            async with pool.connection() as conn:
                await conn.execute("VACUUM ANALYZE session_points")
                await conn.execute("VACUUM ANALYZE rating_sums")
            for name, values in (await measure(pool, devices, days, accounts, explain)).items():
                print(f"  {name:48s} p50 {statistics.median(values):9.2f}   p99 {percentile(values, 99):9.2f}"
                      f"   (n={len(values)})")
        finally:
            await pool.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--days", type=int, default=31)
    parser.add_argument("--accounts", type=int, default=60)
    parser.add_argument("--timescale", action="store_true")
    parser.add_argument("--explain", action="store_true", help="print the plan of one tail query")
    ns = parser.parse_args()
    asyncio.run(run(ns.devices, ns.days, ns.accounts, ns.timescale, ns.explain))
