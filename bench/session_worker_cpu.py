"""Session worker CPU per event: deferred sessions replayed by a SessionWorker, its Python CPU time measured.

A month of ACCOUNTS accounts (Berlin), each with an electricity meter every 15 minutes and an alarm panel
armed and disarmed in turn every 40 minutes (a session per arming: the sessions of a period grow with the
month, as an alarm panel's do), ingested in order in batches of 6 hours of event time with deferred
sessions. After each batch a SessionWorker drains the queue in this process; ``time.process_time`` around
the drain is the worker's Python CPU (PostgreSQL's is not in it). Prints the worker's CPU per event, and for
the first and last quarter of the month (a cost that grows with the period shows as last > first). CPU
time, not wall time, so a loaded machine disturbs it less. To compare with another tree, run this file
with that tree first on the path:

    .venv/bin/python bench/session_worker_cpu.py [ACCOUNTS] [DAYS]                  # defaults: 8 accounts, 30 days
    git worktree add /tmp/base main && PYTHONPATH=/tmp/base .venv/bin/python bench/session_worker_cpu.py
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

import usagehub
from usagehub.core.events import RawMessage
from usagehub.pipeline.session_worker import SessionWorker
from usagehub.pipeline.sessions import SessionEngine
from usagehub.runtime.config import SHIPPED_PROFILES, HubConfig
from usagehub.runtime.hub import build_pipeline
from usagehub.runtime.profile_files import load_profiles
from usagehub.storage.embedded import embedded_database_url
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import open_pool
from usagehub.storage.registry import Registry

START = datetime(2026, 10, 1, tzinfo=UTC)  # 2026-10 in Berlin starts at 2026-09-30T22:00Z: the first day is
STEP = timedelta(minutes=15)                # billed to September, the rest to October


def messages(accounts: int, begin: datetime, end: datetime) -> list[RawMessage]:
    """Readings and alarms with event times in ``[begin, end)``, in time order."""
    out: list[tuple[datetime, RawMessage]] = []
    now = datetime.now(UTC)
    for a in range(accounts):
        k = int((begin - START) / STEP)
        while (ts := START + STEP * k) < end:
            body = {"seq": k, "ts": ts.isoformat(), "energy_wh": 250 * k + a, "boot": 1}
            out.append((ts, RawMessage(transport="mqtt", topic=f"meters/m{a}/reading", payload=orjson.dumps(body),
                                       received_at=now)))
            k += 1
        j = int((begin - START) / timedelta(minutes=40))
        while (ts := START + timedelta(minutes=40) * j) < end:
            if ts >= begin:
                body = {"id": f"x{a}-{j}", "t": int(ts.timestamp() * 1000), "state": "disarmed" if j % 2 else "armed"}
                out.append((ts, RawMessage(transport="mqtt", topic=f"security/p{a}/event",
                                           payload=orjson.dumps(body), received_at=now)))
            j += 1
    return [m for _, m in sorted(out, key=lambda x: x[0])]


async def main(accounts: int, days: int) -> None:
    data = Path(tempfile.mkdtemp(prefix="uh-bench-worker-"))
    try:
        pool = await open_pool(embedded_database_url(data), max_size=4)
        await migrate(pool)
        reg = Registry(pool)
        for a in range(accounts):
            await reg.upsert_account(account_id=f"acc{a}", timezone="Europe/Berlin")
            for dev, profile in ((f"m{a}", "acme-em340"), (f"p{a}", "acme-alarm-ax")):
                await reg.upsert_device(device_id=dev, profile_id=profile)
                await reg.bind(device_id=dev, account_id=f"acc{a}", valid_from=START - timedelta(days=1))
        pipeline, _ = build_pipeline(HubConfig(), pool, load_profiles(SHIPPED_PROFILES))
        engine = next(h.__self__ for h in pipeline.hooks if isinstance(getattr(h, "__self__", None), SessionEngine))
        engine.defer = True
        worker = SessionWorker(pool, engine)
        task = asyncio.create_task(pipeline.run())
        batches: list[tuple[int, float]] = []
        at, end = START, START + timedelta(days=days)
        while at < end:
            msgs = messages(accounts, at, at + timedelta(hours=6))
            for f in [await pipeline.submit(m) for m in msgs]:
                await f
            cpu = time.process_time()
            await worker.drain()
            batches.append((len(msgs), time.process_time() - cpu))
            at += timedelta(hours=6)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM sessions")
            row = await cur.fetchone()
        await pool.close()
    finally:
        shutil.rmtree(data, ignore_errors=True)
    events = sum(n for n, _ in batches)
    q = max(len(batches) // 4, 1)

    def per_event(part: list[tuple[int, float]]) -> float:
        return 1e6 * sum(c for _, c in part) / max(sum(n for n, _ in part), 1)

    print(f"tree {Path(usagehub.__file__).parents[1]}: {accounts} accounts, {days} days, {events} events, "
          f"{row[0] if row else '?'} sessions, {len(batches)} batches")
    print(f"  session worker Python CPU {per_event(batches):.0f} us/event; first quarter "
          f"{per_event(batches[:q]):.0f}, last quarter {per_event(batches[-q:]):.0f} us/event")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8, int(sys.argv[2]) if len(sys.argv) > 2 else 30))
