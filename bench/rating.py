"""Rating latency: an invoice preview of a month of 15-minute readings, and prepaid's usage_charge.

    .venv/bin/python bench/rating.py
"""
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.storage.test_rating_support import GRADUATED_DE, account_with_meter, feed_readings, local, wired
from usagehub.storage.embedded import embedded_database_url
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import open_pool


async def main() -> None:
    folder = tempfile.mkdtemp(prefix="bench-rating-")
    os.chmod(folder, 0o755)
    pool = await open_pool(embedded_database_url(Path(folder)), min_size=1, max_size=4)
    await migrate(pool)
    pipeline, _, rating = wired(pool)
    await rating.start()
    await rating.load_plans(GRADUATED_DE, "p")
    await account_with_meter(pool, "a1", "m1")
    start = local("Europe/Berlin", 2026, 10, 1)
    readings = [(start + timedelta(minutes=15 * i), 250 * i) for i in range(31 * 96)]
    t = time.perf_counter()
    for k in range(0, len(readings), 500):
        await feed_readings(pipeline, "m1", readings[k:k + 500], first_seq=k)
    print(f"fed {len(readings)} readings in {time.perf_counter() - t:.1f}s")
    times = []
    for _ in range(15):
        t = time.perf_counter()
        inv = await rating.invoice_preview("a1", "2026-10")
        times.append(time.perf_counter() - t)
    print(f"invoice_preview ({len(readings) - 1} points, {len(inv.preview.lines)} lines): "
          f"median {statistics.median(times) * 1000:.1f} ms")
    times = []
    async with pool.connection() as conn:
        for i in range(200):
            t = time.perf_counter()
            await rating.usage_charge(conn, account_id="a1", product="energy", quantity=Decimal("0.25"),
                                      at=start + timedelta(days=10, minutes=i))
            times.append(time.perf_counter() - t)
    print(f"usage_charge: median {statistics.median(times) * 1e6:.0f} us")
    await pool.close()

asyncio.run(main())
