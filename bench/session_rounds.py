"""The session worker alone on the realistic fleet of ``bench/fleet.py``: its CPU per event, Python and PostgreSQL.

Feeds the fleet's messages (weeks of history, local shuffles, duplicates, days-late data, a device moving
account) straight into the hub's pipeline with deferred sessions, as ``serve`` does with session workers,
and after every ROUND messages lets a ``SessionWorker`` drain the queue in this process (in ``serve`` a
round takes what 0.5 s of ingest queued: about 2,500 events at the fleet's rate). Only the drains are
measured: ``time.process_time`` (the worker's Python) and the PostgreSQL server's CPU (only the worker's
connection works during a drain). CPU time, not wall time, so a loaded machine disturbs it less.

``--dump FILE`` writes what the worker decided (sessions, kept period partials, billing record quantities,
in a stable order) so that two trees can be compared for exactly the same result:

    .venv/bin/python bench/session_rounds.py [WEEKS] [ACCOUNTS] [ROUND] [--dump /tmp/a.txt] [--profile /tmp/w.prof]
    PYTHONPATH=/work/base .venv/bin/python /work/base/bench/... (or this file with another tree first on the path)
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after PYTHONPATH: another tree given there is the one measured
import usagehub  # noqa: E402
from bench.fleet import fleet  # noqa: E402
from bench.pipeline_cpu import postgres_cpu_s  # noqa: E402
from bench.scratch import scratch  # noqa: E402
from usagehub.core.events import RawMessage  # noqa: E402
from usagehub.pipeline.session_worker import SessionWorker  # noqa: E402
from usagehub.pipeline.sessions import SessionEngine  # noqa: E402
from usagehub.runtime.config import SHIPPED_PROFILES, HubConfig  # noqa: E402
from usagehub.runtime.hub import build_pipeline  # noqa: E402
from usagehub.runtime.profile_files import load_profiles  # noqa: E402
from usagehub.storage.embedded import embedded_database_url  # noqa: E402
from usagehub.storage.pool import open_pool  # noqa: E402

CHUNK = 500  # messages in flight at once

DUMPS = {
    "sessions": "SELECT account_id, service, period_label, start_ts, end_ts, closed_reason, activity_count, "
                "devices, partials::text, resume::text, expires_at, carry::text FROM sessions ORDER BY 1, 2, 4, 10",
    "period_truth": "SELECT account_id, period_label, partials::text FROM period_truth ORDER BY 1, 2",
    "billing_records": "SELECT account_id, period_label, product, kind, status, quantity, unit FROM billing_records "
                       "ORDER BY 1, 2, 3, 4, 6",
    "session_queue": "SELECT count(*) FROM session_queue",
}


async def run(url: str, pgdata: Path, msgs: list[tuple[bytes, bytes]], every: int,
              prof: cProfile.Profile | None) -> tuple[dict[str, float], list[str]]:
    pool = await open_pool(url, max_size=4)
    pipeline, billing = build_pipeline(HubConfig(), pool, load_profiles(SHIPPED_PROFILES))
    billing.engine.defer = True
    worker = SessionWorker(pool, SessionEngine(billing.engine.profiles))
    if os.environ.get("BENCH_SEGMENTS"):  # a round's segment bound (SessionWorker.segments_per_round)
        worker.segments_per_round = int(os.environ["BENCH_SEGMENTS"])
    task = asyncio.create_task(pipeline.run())
    cpu = {"python": 0.0, "postgres": 0.0, "wall": 0.0, "rounds": 0.0}
    since = 0
    for i in range(0, len(msgs), CHUNK):
        futures = [await pipeline.submit(RawMessage(transport="mqtt", topic=topic.decode(), payload=payload,
                                                    received_at=datetime.now(UTC)))
                   for topic, payload in msgs[i:i + CHUNK]]
        await asyncio.gather(*futures)
        since += CHUNK
        if since >= every or i + CHUNK >= len(msgs):
            since = 0
            t0, c0, p0 = time.perf_counter(), time.process_time(), postgres_cpu_s(pgdata)
            if prof:
                prof.enable()
            while done := await worker.round():  # as drain(), counting rounds
                cpu["rounds"] += 1
                del done
            if prof:
                prof.disable()
            cpu["python"] += time.process_time() - c0
            cpu["postgres"] += postgres_cpu_s(pgdata) - p0
            cpu["wall"] += time.perf_counter() - t0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    lines: list[str] = []
    async with pool.connection() as conn:
        for name, sql in DUMPS.items():
            rows: list[Any] = await (await conn.execute(sql)).fetchall()
            lines += [f"{name}\t" + "\t".join(map(str, r)) for r in rows]
        row = await (await conn.execute("SELECT count(*) FROM events")).fetchone()
        cpu["events"] = float(row[0]) if row else 0.0
    cpu["points_read"] = float(worker.engine.points_read)
    cpu["marks_moved"] = float(worker.engine.marks_moved)
    cpu["marks_unchanged"] = float(worker.engine.marks_unchanged)
    await pool.close()
    return cpu, lines


def main() -> None:
    args = [a for i, a in enumerate(sys.argv[1:], 1) if not a.startswith("--") and not sys.argv[i - 1].startswith("--")]
    weeks = int(args[0]) if args else 5
    accounts = int(args[1]) if len(args) > 1 else 40
    every = int(args[2]) if len(args) > 2 else 2500
    dump = sys.argv[sys.argv.index("--dump") + 1] if "--dump" in sys.argv else None
    profile = sys.argv[sys.argv.index("--profile") + 1] if "--profile" in sys.argv else None
    msgs, _truth, seed = fleet(weeks, accounts)
    tmp = scratch("usagehub-rounds-")
    url = embedded_database_url(tmp / "db")
    (tmp / "seed.yaml").write_text(seed)
    subprocess.run([sys.executable, "-m", "usagehub", "seed", str(tmp / "seed.yaml"), "--database-url", url,
                    "--data-dir", str(tmp), "--log-level", "WARNING"], check=True, cwd=ROOT, capture_output=True)
    prof = cProfile.Profile() if profile else None
    cpu, lines = asyncio.run(run(url, tmp / "db" / "pg", msgs, every, prof))
    if prof and profile:
        prof.dump_stats(profile)
    if dump:
        Path(dump).write_text("\n".join(lines) + "\n")
    n = cpu["events"]
    print(f"tree {Path(usagehub.__file__).parents[1]}: fleet {weeks} weeks {accounts} accounts, {n:.0f} events, "
          f"a drain every {every} messages: {cpu['rounds']:.0f} rounds, points read {cpu['points_read']:.0f}, "
          f"marks moved {cpu['marks_moved']:.0f}, walked again unchanged {cpu['marks_unchanged']:.0f}")
    print(f"  session worker CPU per event: Python {1e6 * cpu['python'] / n:.1f} us, PostgreSQL "
          f"{1e6 * cpu['postgres'] / n:.1f} us, both {1e6 * (cpu['python'] + cpu['postgres']) / n:.1f} us; "
          f"wall {1e6 * cpu['wall'] / n:.1f} us")


if __name__ == "__main__":
    main()
