"""The demo's history load: the fleet's past through the full pipeline, against raw ingest of the same messages.

Baseline (same run, same messages, fresh database): the pipeline with no batch hooks (decode, identity,
events only). Measured: the pipeline as the hub wires it (usage, sessions and billing records, prepaid
debit hook). Prints messages/s of both and where the time goes.

Run: .venv/bin/python bench/demo_history.py [--days 30 --meters 20 --panels 5]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from usagehub.adapters.mqtt.config import MqttConfig
from usagehub.core.events import RawMessage
from usagehub.runtime.config import HubConfig
from usagehub.runtime.hub import build_pipeline, registry_for
from usagehub.runtime.profile_files import load_profiles
from usagehub.runtime.seed import SeedFile, apply_seed
from usagehub.runtime.simulate import Fleet, Simulator
from usagehub.storage.embedded import embedded_database_url
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import open_pool


async def one_run(url: str, fleet: Fleet, days: int, hooks: bool) -> tuple[int, float, Counter[str]]:
    """Messages and seconds of one history load; seconds per hook."""
    pool = await open_pool(url, max_size=4)
    await migrate(pool)
    config = HubConfig()
    pipeline, billing = build_pipeline(config, pool, load_profiles(config.profiles))
    spent: Counter[str] = Counter()

    def timed(hook: Any, name: str) -> Any:
        async def run(conn: Any, events: Any) -> None:
            started = time.perf_counter()
            await hook(conn, events)
            spent[name] += time.perf_counter() - started
        return run

    pipeline.hooks = [timed(h, n) for h, n in zip(pipeline.hooks, ("usage", "sessions", "prepaid"), strict=False)] \
        if hooks else []
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    since = now - timedelta(days=days)
    seed: dict[str, Any] = fleet.seed(since - timedelta(hours=1))
    for account in seed["accounts"]:
        account["prepaid"] = False  # the demo does not debit its history either
    await apply_seed(registry_for(pool, billing), SeedFile.model_validate(seed))
    sim = Simulator(fleet, MqttConfig(url="mqtt://127.0.0.1:1"))
    messages = [RawMessage(transport="mqtt", topic=t, payload=p, received_at=now)
                for t, p, _ in sim.history(since, now, hourly_since=now - timedelta(days=35))]
    task = asyncio.create_task(pipeline.run())
    started = time.perf_counter()
    futures = [await pipeline.submit(m) for m in messages]
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - started
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pool.close()
    return len(messages), elapsed, spent


async def main(days: int, meters: int, panels: int) -> None:
    fleet = Fleet.of_size(meters, panels)
    root = Path(tempfile.mkdtemp(prefix="usagehub-bench-demo-"))
    root.chmod(0o755)  # noqa: ASYNC240 — once, before anything runs
    for label, hooks in (("baseline: events only (no hooks)", False), ("demo: full pipeline", True)):
        folder = root / ("full" if hooks else "raw")
        folder.mkdir()
        folder.chmod(0o755)
        url = await asyncio.to_thread(embedded_database_url, folder)
        count, seconds, spent = await one_run(url, fleet, days, hooks)
        detail = ", ".join(f"{k} {v:.1f} s" for k, v in spent.items())
        print(f"{label:36s} {count} messages in {seconds:.1f} s = {count / seconds:,.0f} msg/s"
              + (f"  ({detail})" if detail else ""))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--meters", type=int, default=20)
    parser.add_argument("--panels", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.days, args.meters, args.panels))
