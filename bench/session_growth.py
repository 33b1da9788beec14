"""Cost of one in-order reading late in a month: a meter that never idles keeps one open session.

Feeds N readings of one meter at 15-minute cadence, one batch each, through the real pipeline
(usage entries, points, sessions, billing records on embedded PostgreSQL), and prints the median
commit latency of the first and the last 100 readings. Before sessions carried their state, the
last ones replayed every point of the month.

    .venv/bin/python bench/session_growth.py 2000
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from usagehub.core.events import RawMessage
from usagehub.runtime.config import SHIPPED_PROFILES, HubConfig
from usagehub.runtime.hub import build_pipeline
from usagehub.runtime.profile_files import load_profiles
from usagehub.storage.embedded import embedded_database_url
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import open_pool
from usagehub.storage.registry import Registry


async def main(n: int) -> None:
    data = Path(tempfile.mkdtemp(prefix="uh-bench-"))
    pool = await open_pool(embedded_database_url(data), max_size=4)
    await migrate(pool)
    reg = Registry(pool)
    await reg.upsert_account(account_id="acc", timezone="Europe/Berlin")
    await reg.upsert_device(device_id="m1", profile_id="acme-em340")
    start = datetime(2026, 11, 1, tzinfo=UTC)
    await reg.bind(device_id="m1", account_id="acc", valid_from=start - timedelta(days=1))
    pipeline, _ = build_pipeline(HubConfig(), pool, load_profiles(SHIPPED_PROFILES))
    task = asyncio.create_task(pipeline.run())
    latencies = []
    for i in range(n):
        body = {"seq": i, "ts": (start + timedelta(minutes=15 * i)).isoformat(), "energy_wh": 250 * i, "boot": 1}
        msg = RawMessage(transport="mqtt", topic="meters/m1/reading", payload=orjson.dumps(body),
                         received_at=datetime.now(UTC))
        t = time.perf_counter()
        await (await pipeline.submit(msg))
        latencies.append(time.perf_counter() - t)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pool.close()
    first, last = statistics.median(latencies[:100]), statistics.median(latencies[-100:])
    print(f"{n} readings of one meter, one batch each: median commit latency first 100 {first * 1000:.1f} ms, "
          f"last 100 {last * 1000:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
