"""The stored neighbours of late readings (``storage.usage.stored_neighbourhoods``): client CPU and wall time.

1,000 registers with 50 stored readings each; a batch with 3 late readings per register (every one needs its
stored predecessor and successor). Prints the medians of 15 reads against a real (embedded) PostgreSQL.
Before the probes were built in SQL (2026-11-29) the same read cost 68 ms of client CPU, 105 ms wall.

Run: .venv/bin/python bench/late_neighbours.py [REGISTERS] [LATE_PER_REGISTER]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.scratch import scratch
from usagehub.core.counters import Reading
from usagehub.storage.embedded import embedded_database_url
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import open_pool
from usagehub.storage.usage import stored_neighbourhoods

T0 = datetime(2026, 5, 1, tzinfo=UTC)


async def main(registers: int, late: int) -> None:
    pool = await open_pool(embedded_database_url(scratch("usagehub-bench-neighbours-")), max_size=2)
    await migrate(pool)
    async with pool.connection() as conn:
        await conn.execute("SELECT ensure_event_partition(%s)", (T0.date(),))
        await conn.execute("INSERT INTO events (device_id, meter, ts, event_id, value, meta_id, received_at) "
                           "SELECT 'd' || d, 'energy', %s + n * interval '15 minutes', n::text, n, "
                           "event_meta_id('kWh', 'cumulative', 'p', 'electricity'), now() "
                           "FROM generate_series(1, %s) d, generate_series(0, 99, 2) n", (T0, registers))
    batches = {(f"d{d}", "energy"): [Reading(ts=T0 + timedelta(minutes=15 * n), value=Decimal(n), event_id=str(n))
                                     for n in range(41, 41 + 2 * late, 2)] for d in range(1, registers + 1)}
    latest = {key: Reading(ts=T0 + timedelta(minutes=15 * 98), value=Decimal(98), event_id="98") for key in batches}
    cpu, wall, rows = [], [], 0
    for _ in range(15):
        async with pool.connection() as conn:
            c0, w0 = time.process_time(), time.perf_counter()
            got = await stored_neighbourhoods(conn, batches, latest)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
            rows = sum(len(v) for v in got.values())
    await pool.close()
    n = registers * late
    print(f"{n:,} late readings in {registers:,} registers, {rows:,} neighbours read: client CPU median "
          f"{statistics.median(cpu) * 1000:.1f} ms ({statistics.median(cpu) * 1e6 / n:.1f} µs per late reading), "
          f"wall {statistics.median(wall) * 1000:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000, int(sys.argv[2]) if len(sys.argv) > 2 else 3))
