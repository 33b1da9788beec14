"""The pipeline alone on the realistic fleet of ``bench/fleet.py``: no broker, no sockets, one process.

Feeds the fleet's messages (weeks of history, local shuffles, duplicates, days-late data, a device
moving account) straight into the hub's pipeline in batches as the MQTT adapter would, on embedded
PostgreSQL, and prints events/s of the pipeline with the time per stage. It isolates what a batch
costs in Python and SQL from the receive path. ``--profile FILE`` writes a cProfile of the run.

    .venv/bin/python bench/pipeline_cpu.py [WEEKS] [ACCOUNTS] [--deferred] [--profile /tmp/pipe.prof]
    .venv/bin/python bench/pipeline_cpu.py --gateways [READINGS]   # bench/ingest.py's gateway messages of 50

``--gateways`` feeds ``bench/ingest.py``'s gateway case instead (deferred sessions, meters bound to no account)
and prints the stages per reading: the hub process's CPU per reading is the figure to compare.

``--deferred`` queues sessions as ``serve`` does with session workers, and replays the queue after ingest
(timed apart: in ``serve`` that work runs in another process, on the other core).
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

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.fleet import fleet  # noqa: E402
from bench.scratch import scratch  # noqa: E402
from usagehub.core.events import RawMessage  # noqa: E402
from usagehub.pipeline.session_worker import SessionWorker  # noqa: E402
from usagehub.pipeline.sessions import SessionEngine  # noqa: E402
from usagehub.runtime.config import SHIPPED_PROFILES, HubConfig  # noqa: E402
from usagehub.runtime.hub import build_pipeline  # noqa: E402
from usagehub.runtime.profile_files import load_profiles  # noqa: E402
from usagehub.storage.embedded import embedded_database_url  # noqa: E402
from usagehub.storage.pool import open_pool  # noqa: E402


def postgres_cpu_s(pgdata: Path) -> float:
    """CPU seconds used so far by the server of ``pgdata`` and its backends (user + system)."""
    postmaster = (pgdata / "postmaster.pid").read_text().split()[0]
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().rsplit(")", 1)[0].split(" (")[0], stat.read_text().rsplit(")", 1)[1]
        except (OSError, IndexError):
            continue
        parts = rest.split()
        if pid == postmaster or parts[1] == postmaster:  # the server or one of its children
            total += int(parts[11]) + int(parts[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


CHUNK = 500  # messages in flight at once, about what the hub's batches hold under load


async def run(url: str, pgdata: Path, msgs: list[tuple[bytes, bytes]], deferred: bool
              ) -> tuple[float, dict[str, float]]:
    pool = await open_pool(url, max_size=4)
    pipeline, billing = build_pipeline(HubConfig(), pool, load_profiles(SHIPPED_PROFILES))
    billing.engine.defer = deferred
    stage: dict[str, float] = {}
    hooks = []
    originals = list(pipeline.hooks)
    for hook in pipeline.hooks:
        name = getattr(getattr(hook, "__self__", None), "__class__", type(hook)).__name__

        async def timed(conn, events, _hook=hook, _name=name):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            await _hook(conn, events)
            stage[_name] = stage.get(_name, 0.0) + time.perf_counter() - t

        hooks.append(timed)
    pipeline.hooks = hooks
    task = asyncio.create_task(pipeline.run())
    t0, cpu0, pg0 = time.perf_counter(), time.process_time(), postgres_cpu_s(pgdata)
    for i in range(0, len(msgs), CHUNK):
        futures = [await pipeline.submit(RawMessage(transport="mqtt", topic=topic.decode(), payload=payload,
                                                    received_at=datetime.now(UTC)))
                   for topic, payload in msgs[i:i + CHUNK]]
        await asyncio.gather(*futures)
    elapsed = time.perf_counter() - t0
    stage["(hub process CPU)"] = time.process_time() - cpu0
    stage["(postgres CPU)"] = postgres_cpu_s(pgdata) - pg0
    engine = next((getattr(h, "__self__", None) for h in originals if hasattr(getattr(h, "__self__", None),
                                                                                   "points_read")), None)
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT count(*) FROM session_points")).fetchone()
    if deferred:  # the session worker's share, measured after ingest (serve runs it in another process)
        t1, cpu1, pg1 = time.perf_counter(), time.process_time(), postgres_cpu_s(pgdata)
        worker = SessionWorker(pool, SessionEngine(billing.engine.profiles))
        await worker.drain()
        stage["(session worker wall)"] = time.perf_counter() - t1
        stage["(session worker CPU)"] = time.process_time() - cpu1
        stage["(session worker postgres CPU)"] = postgres_cpu_s(pgdata) - pg1
        engine = worker.engine
    print(f"session points stored {row[0] if row else 0:,}, replayed {getattr(engine, 'points_read', 0):,}")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pool.close()
    return elapsed, stage


def gateway_source(readings: int) -> tuple[list[tuple[bytes, bytes]], str, int]:
    """``bench/ingest.py``'s gateway case: messages of 50 readings of 1,000 meters behind 50 gateways."""
    from bench.ingest import GATEWAYS, METERS, messages

    lines = ["accounts: [{id: a}]", "devices:"] + [f"  - {{id: m{d:04d}}}" for d in range(METERS)]
    lines += [f"  - {{id: g{g:02d}, profile: acme-dc100-gateway}}" for g in range(GATEWAYS)]
    return messages(readings, gateway=50), "\n".join(lines) + "\n", readings


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--") and not a.startswith("/")]
    profile = sys.argv[sys.argv.index("--profile") + 1] if "--profile" in sys.argv else None
    gateways = "--gateways" in sys.argv
    if gateways:  # N readings (default 200,000) in gateway messages of 50, the meters bound to no account
        msgs, seed, units = gateway_source(int(args[0]) if args else 200_000)
    else:
        weeks, accounts = int(args[0]) if args else 2, int(args[1]) if len(args) > 1 else 20
        msgs, _truth, seed = fleet(weeks, accounts)
        units = len(msgs)
    tmp = scratch("usagehub-pipe-")
    url = embedded_database_url(tmp / "db")
    (tmp / "seed.yaml").write_text(seed)
    subprocess.run([sys.executable, "-m", "usagehub", "seed", str(tmp / "seed.yaml"), "--database-url", url,
                    "--data-dir", str(tmp), "--log-level", "WARNING"], check=True, cwd=ROOT, capture_output=True)
    if gateways:
        with psycopg.connect(url) as conn:
            conn.execute("INSERT INTO gateway_devices (gateway_id, device_id) SELECT g.device_id, m.device_id "
                         "FROM devices g JOIN devices m ON m.device_id LIKE 'm%' WHERE g.device_id LIKE 'g%'")
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    elapsed, stage = asyncio.run(run(url, tmp / "db" / "pg", msgs, "--deferred" in sys.argv or gateways))
    if prof:
        prof.disable()
        prof.dump_stats(profile)
    unit = "reading" if gateways else "message"
    print(f"pipeline alone: {units} {unit}s in {len(msgs)} messages, {elapsed:.1f} s = {units / elapsed:,.0f} "
          f"{unit}s/s")
    for name, seconds in sorted(stage.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<30} {seconds:6.2f} s  {1e6 * seconds / units:6.1f} us/{unit}")

if __name__ == "__main__":
    main()
