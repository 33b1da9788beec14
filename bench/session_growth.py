"""Cost of one reading late in a month: a meter that never idles keeps one open session.

Feeds N readings of one meter at 15-minute cadence, one batch each, through the real pipeline
(usage points with their entries, sessions, billing records on embedded PostgreSQL), and prints the median
commit latency of the first and the last 100 readings. With ``--shuffle`` the readings arrive out of
order (blocks of 4 shuffled, and every 50th reading held back a day), which used to replay the whole
open session on every batch.

    .venv/bin/python bench/session_growth.py 2000 --shuffle
"""

from __future__ import annotations

import asyncio
import random
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


def arrival_order(n: int, shuffle: bool) -> list[int]:
    """Reading indices in arrival order: in order, or locally shuffled with some a day late."""
    if not shuffle:
        return list(range(n))
    rng = random.Random(7)
    order: list[int] = []
    for i in range(0, n, 4):
        block = list(range(i, min(i + 4, n)))
        rng.shuffle(block)
        order += block
    held = [i for i in order if i % 50 == 25]
    order = [i for i in order if i % 50 != 25]
    for i in held:  # a day (96 readings) late
        order.insert(min(order.index(i - 1) + 96, len(order)) if i - 1 in order else 0, i)
    return order


async def main(n: int, shuffle: bool) -> None:
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
    for i in arrival_order(n, shuffle):
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
    read = getattr(getattr(pipeline.hooks[1], "__self__", None), "points_read", "?")
    print(f"{n} readings of one meter{' (shuffled, 2 % a day late)' if shuffle else ''}, one batch each, "
          f"session points replayed {read}: median commit latency first 100 {first * 1000:.1f} ms, "
          f"last 100 {last * 1000:.1f} ms")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    asyncio.run(main(int(args[0]) if args else 2000, "--shuffle" in sys.argv))
