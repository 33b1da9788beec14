"""What the console's quarantine and alert panels cost on a large quarantine, with and without index 0022.

One embedded PostgreSQL (started here), --rows quarantined messages from --devices devices of two tenants
(one rare device with 20 of them), --alerts alerts. Each query is timed as the console sends it (through
``Reads.quarantine``, ``quarantine_bursts`` and ``list_alerts``), median of --repeat runs, first with the
indexes of migration 0022, then — the baseline, in the same run — after dropping them.
Usage: .venv/bin/python bench/console_queries.py [--rows 300000] [--devices 2000] [--alerts 100000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from usagehub.storage.alerts import list_alerts, quarantine_bursts  # noqa: E402
from usagehub.storage.embedded import embedded_database_url  # noqa: E402
from usagehub.storage.migrations import migrate  # noqa: E402
from usagehub.storage.pool import open_pool  # noqa: E402
from usagehub.storage.queries import Reads  # noqa: E402

NOW = datetime.now(UTC)


async def fill(pool: Any, rows: int, devices: int, alerts: int) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO devices (device_id, profile_id, tenant) SELECT 'd' || i, 'acme-em340', "
            "CASE WHEN i %% 2 = 0 THEN 'default' ELSE 'elsewhere' END FROM generate_series(1, %s) i", (devices,))
        await conn.execute("INSERT INTO devices (device_id, profile_id, tenant) VALUES ('rare', 'acme-em340', "
                           "'default')")
        # Spread over the last 30 days, newest last; 20 of the rare device among them.
        await conn.execute(
            "INSERT INTO quarantine (received_at, transport, topic, payload, reason, device_id) "
            "SELECT %s - (%s - i) * interval '30 days' / %s, 'mqtt', 'meters/x/reading', "
            "convert_to('{\"bad\": ' || i || '}', 'UTF8'), CASE WHEN i %% 3 = 0 THEN 'decode' ELSE 'refused' END, "
            "CASE WHEN i %% (%s / 20) = 0 THEN 'rare' ELSE 'd' || (1 + i %% %s) END FROM generate_series(1, %s) i",
            (NOW, rows, rows, rows, devices, rows))
        await conn.execute(
            "INSERT INTO alerts (tenant, kind, severity, device_id, message, raised_at, dedupe_key, acked_at) "
            "SELECT CASE WHEN i %% 2 = 0 THEN 'default' ELSE 'elsewhere' END, 'silent', 'warning', 'd' || i, "
            "'silent', %s - i * interval '1 minute', 'b' || i, CASE WHEN i %% 10 <> 0 THEN %s END "
            "FROM generate_series(1, %s) i", (NOW, NOW, alerts))
        await conn.execute("ANALYZE quarantine")
        await conn.execute("ANALYZE alerts")


async def timed(run: Callable[[], Awaitable[Any]], repeat: int) -> tuple[float, Any]:
    result, samples = None, []
    for _ in range(repeat):
        start = time.perf_counter()
        result = await run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000, result


async def measure(pool: Any, repeat: int) -> dict[str, tuple[float, int]]:
    reads = Reads(pool)
    hour_ago = NOW - timedelta(hours=1)

    async def bursts() -> list[tuple[str, int]]:
        async with pool.connection() as conn:
            return await quarantine_bursts(conn, since=NOW - timedelta(minutes=10), threshold=20)

    async def open_alerts() -> list[Any]:
        async with pool.connection() as conn:
            return await list_alerts(conn, tenant="default", open_only=True, kind=None, after=None, limit=101)

    queries: dict[str, Callable[[], Awaitable[Any]]] = {
        "quarantine first page (no filter)": lambda: reads.quarantine(tenant="default", reason=None, after=None,
                                                                      limit=101, include_replayed=True),
        "quarantine of the rare device": lambda: reads.quarantine(tenant="default", reason=None, after=None,
                                                                  limit=101, include_replayed=True,
                                                                  device_id="rare"),
        "quarantine received in the last hour": lambda: reads.quarantine(tenant="default", reason=None, after=None,
                                                                         limit=101, include_replayed=True,
                                                                         since=hour_ago),
        "burst sweep (last 10 minutes)": bursts,
        "open alerts first page": open_alerts,
    }
    out = {}
    for name, run in queries.items():
        ms, result = await timed(run, repeat)
        out[name] = (ms, len(result))
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--alerts", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = await asyncio.to_thread(embedded_database_url, Path(tmp))
        pool = await open_pool(url, max_size=2)
        try:
            await migrate(pool)
            start = time.perf_counter()
            await fill(pool, args.rows, args.devices, args.alerts)
            print(f"filled {args.rows} quarantined messages, {args.alerts} alerts in "
                  f"{time.perf_counter() - start:.1f} s")
            indexed = await measure(pool, args.repeat)
            async with pool.connection() as conn:
                await conn.execute("DROP INDEX quarantine_device, quarantine_received")
            baseline = await measure(pool, args.repeat)
        finally:
            await pool.close()
    print(f"{'query':42} {'rows':>5} {'0022 (ms)':>10} {'without (ms)':>13}")
    for name, (ms, n) in indexed.items():
        print(f"{name:42} {n:5d} {ms:10.2f} {baseline[name][0]:13.2f}")


if __name__ == "__main__":
    asyncio.run(main())
