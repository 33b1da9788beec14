"""cProfile of the hub's pipeline on the fleet of ``bench/fleet.py``, in process (no broker, no web).

Submits the fleet's messages to the real pipeline (usage, sessions, records on embedded PostgreSQL)
in windows of 2,000 and prints events/s, then the top functions by own time. Runs against any
checkout, so the same command measures before and after:

    .venv/bin/python bench/fleet_profile.py [WEEKS] [ACCOUNTS]
    PYTHONPATH=/work/main /work/main/.venv/bin/python bench/fleet_profile.py 1 40   # main, same fleet
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # bench.fleet; PYTHONPATH wins for usagehub
from bench.fleet import fleet
from usagehub.core.events import RawMessage
from usagehub.runtime.config import SHIPPED_PROFILES, HubConfig
from usagehub.runtime.hub import build_pipeline
from usagehub.runtime.profile_files import load_profiles
from usagehub.runtime.seed import apply_seed, parse_seed
from usagehub.storage.embedded import embedded_database_url
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import open_pool
from usagehub.storage.registry import Registry


async def main(weeks: int, accounts: int) -> None:
    msgs, _, seed = fleet(weeks, accounts)
    data = Path(tempfile.mkdtemp(prefix="uh-fleet-prof-"))
    (data / "seed.yaml").write_text(seed)
    pool = await open_pool(embedded_database_url(data / "db"), max_size=4)
    await migrate(pool)
    await apply_seed(Registry(pool), parse_seed(data / "seed.yaml"))
    pipeline, _ = build_pipeline(HubConfig(), pool, load_profiles(SHIPPED_PROFILES))
    task = asyncio.create_task(pipeline.run())
    prof = cProfile.Profile()
    t0, cpu0 = time.perf_counter(), time.process_time()
    prof.enable()
    for i in range(0, len(msgs), 2000):
        futures = [await pipeline.submit(RawMessage(transport="mqtt", topic=t.decode(), payload=p,
                                                    received_at=datetime.now(UTC))) for t, p in msgs[i:i + 2000]]
        await asyncio.gather(*futures)
    prof.disable()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pool.close()
    accepted = pipeline.totals["accepted"]
    print(f"{len(msgs)} messages, {accepted} events: {accepted / wall:,.0f} events/s wall, "
          f"{accepted / cpu:,.0f} events per hub CPU second (profiled)")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats("usagehub", 22)
    print(out.getvalue())


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1, int(sys.argv[2]) if len(sys.argv) > 2 else 40))
