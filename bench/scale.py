"""Scale-out benchmark: the same fleet through 1, 2 and 4 bus workers, beside the single-process pipeline.

In one run, on one embedded PostgreSQL and one nats-server (JetStream, R=1, file storage):
  direct    the pipeline in one process, fed in-process (what ``usagehub serve`` does)      — the baseline
  bus xW    this process as the ingest node (route + publish, PubAck) → W ``usagehub worker`` processes
Each case gets a fresh copy of a seeded database. Reported: events/s from the first submit to the last
commit, and receive → commit latency p50/p99 (``ingested_at`` is the storing transaction's start).
Exactly-once is checked in every case: stored events = distinct events and usage = the fleet's truth.
Usage: .venv/bin/python bench/scale.py [MESSAGES] [WORKERS...]      (default: 20000 1 2 4)
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from usagehub.core.events import RawMessage  # noqa: E402
from usagehub.runtime.config import HubConfig  # noqa: E402

METERS = 1000
PARTITIONS = 16
START = datetime(2026, 10, 1, tzinfo=UTC)


def fleet(n: int) -> tuple[list[tuple[str, bytes]], int, Decimal]:
    """``n`` readings of ``METERS`` meters in device order per meter, 5 % resent; distinct count; kWh truth."""
    rng = random.Random(7)
    rows, registers = [], [rng.randrange(1000, 10**6) for _ in range(METERS)]
    first = list(registers)
    for k in range(n):
        d, seq = k % METERS, k // METERS + 1
        if seq > 1:
            registers[d] += rng.randrange(0, 500)
        body = {"seq": seq, "ts": (START + timedelta(minutes=15 * seq)).isoformat(), "energy_wh": registers[d],
                "boot": 1}
        rows.append((f"meters/m{d:04d}/reading", orjson.dumps(body)))
    truth = sum((Decimal(r - f) for r, f in zip(registers, first, strict=True)), Decimal(0)) / 1000
    dups = [rows[i] for i in sorted(rng.sample(range(n // 2), n // 20))]  # resent mid-stream
    return rows[: n // 2] + dups + rows[n // 2:], n, truth


def raw(topic: str, payload: bytes) -> RawMessage:
    return RawMessage(transport="mqtt", topic=topic, payload=payload, received_at=datetime.now(UTC))


def with_db(server: str, name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(server)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]


def seeded_template(server: str, tmp: Path) -> str:
    """A migrated, seeded database to clone per case."""
    name = f"scale_tpl_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    seed = tmp / "seed.yaml"
    lines = ["accounts:", *[f"  - {{id: a{a}}}" for a in range(10)], "devices:"]
    lines += [f"  - {{id: m{d:04d}, profile: acme-em340}}" for d in range(METERS)]
    lines += ["bindings:"] + [f'  - {{device: m{d:04d}, account: a{d % 10}, valid_from: "2026-01-01T00:00:00Z"}}'
                              for d in range(METERS)]
    seed.write_text("\n".join(lines) + "\n")
    subprocess.run([sys.executable, "-m", "usagehub", "seed", str(seed), "--database-url", with_db(server, name),
                    "--data-dir", str(tmp), "--log-level", "WARNING"], check=True, cwd=ROOT, capture_output=True)
    return name


def clone(server: str, template: str) -> str:
    name = f"scale_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return with_db(server, name)


def measure(url: str) -> tuple[int, Decimal, float, float, float]:
    """Stored events, usage kWh, events/s (first receive → last commit), latency p50/p99 in ms."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), extract(epoch FROM max(ingested_at) - min(received_at)), "
            "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM ingested_at - received_at)), "
            "percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM ingested_at - received_at)) "
            "FROM events").fetchone()
        usage = conn.execute("SELECT coalesce(sum(quantity), 0) FROM usage_entries").fetchone()
    assert row is not None and usage is not None
    n, span = int(row[0]), float(row[1] or 0)
    # ingested_at is the transaction's start: add the mean commit tail by measuring to "now" is not possible
    # after the fact, so the span is slightly short; the same bias applies to every case.
    return n, Decimal(usage[0]), n / span if span else 0.0, float(row[2] or 0) * 1000, float(row[3] or 0) * 1000


def wait_events(url: str, n: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM events").fetchone()
        if row and int(row[0]) >= n:
            return
        time.sleep(0.2)
    raise RuntimeError(f"only some of {n} events arrived")


async def direct(url: str, messages: list[tuple[str, bytes]]) -> None:
    """The single-process baseline: the hub's pipeline fed in-process, like an adapter does."""
    from usagehub.runtime.hub import build_pipeline, open_storage
    from usagehub.runtime.profile_files import load_profiles

    config = HubConfig(database_url=url)
    async with open_storage(config) as pool:
        pipeline, _ = build_pipeline(config, pool, load_profiles(config.profiles))
        task = asyncio.create_task(pipeline.run())
        futures = [await pipeline.submit(raw(t, p)) for t, p in messages]
        await asyncio.gather(*futures)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def publish(bus: str, url: str, messages: list[tuple[str, bytes]]) -> None:
    """This process as an ingest node: route by account (as ``serve`` does), publish, wait for every PubAck."""
    from usagehub.bus.publisher import BusPublisher
    from usagehub.core.decode import ProfileSet
    from usagehub.runtime.profile_files import load_profiles
    from usagehub.runtime.scaleout import AccountRouter
    from usagehub.runtime.worker import bus_settings, declare
    from usagehub.storage.pool import open_pool

    config = HubConfig(bus=bus, bus_partitions=PARTITIONS)
    settings = bus_settings(config)
    pool = await open_pool(url, min_size=1, max_size=1)
    router = AccountRouter(pool)
    await router.refresh()
    await pool.close()
    nc, js = await declare(settings, name="bench-ingest")
    publisher = BusPublisher(js, ProfileSet(load_profiles(config.profiles)), settings, key_of=router.key_of)
    futures = [await publisher.submit(raw(t, p)) for t, p in messages]
    await asyncio.gather(*futures)
    await nc.close()


def bus_case(server: str, template: str, messages: list[tuple[str, bytes]], workers: int, tmp: Path,
             distinct: int) -> str:
    from usagehub.runtime.natsd import NatsServer

    url = clone(server, template)
    nats = NatsServer(store_dir=tmp / f"nats-{workers}-{uuid.uuid4().hex[:4]}" / "js")
    nats.start()
    env = {**os.environ, "USAGEHUB_BUS_PARTITIONS": str(PARTITIONS), "USAGEHUB_LOG_LEVEL": "INFO"}
    logs = [(tmp / f"worker-{workers}-{i}.log").open("ab") for i in range(workers)]
    procs = [subprocess.Popen([sys.executable, "-m", "usagehub", "worker", "--bus", nats.url, "--index", str(i),
                               "--workers", str(workers), "--database-url", url, "--data-dir", str(tmp)],
                              cwd=ROOT, env=env, stdout=logs[i], stderr=subprocess.STDOUT) for i in range(workers)]
    try:
        time.sleep(3 + workers)  # workers connected and subscribed (they would catch up anyway)
        asyncio.run(publish(nats.url, url, messages))
        wait_events(url, distinct)
        time.sleep(1.0)  # late redeliveries must not add anything
        return url
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        for f in logs:
            f.close()
        nats.stop()
        print(f"worker logs: {tmp}/worker-{workers}-*.log", flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--direct":  # the baseline's own process
        asyncio.run(direct(sys.argv[2], [(t, p.encode()) for t, p in orjson.loads(Path(sys.argv[3]).read_bytes())]))
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    counts = [int(a) for a in sys.argv[2:]] or [1, 2, 4]
    from usagehub.storage.embedded import embedded_database_url

    tmp = Path(tempfile.mkdtemp(prefix="usagehub-scale-"))
    os.chmod(tmp, 0o755)
    server = embedded_database_url(tmp / "db")
    template = seeded_template(server, tmp)
    messages, distinct, truth = fleet(n)
    dump = tmp / "messages.json"
    dump.write_bytes(orjson.dumps([(t, p.decode()) for t, p in messages]))
    print(f"fleet: {len(messages)} messages ({distinct} distinct readings of {METERS} meters), "
          f"{PARTITIONS} partitions, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    results = []
    url = clone(server, template)
    subprocess.run([sys.executable, __file__, "--direct", url, str(dump)], check=True, cwd=ROOT)
    results.append(("direct (1 process)", url))
    for w in counts:
        results.append((f"bus, {w} worker{'s' if w > 1 else ''}", bus_case(server, template, messages, w, tmp,
                                                                            distinct)))
    print(f"{'case':<22}{'events/s':>10}{'p50 ms':>10}{'p99 ms':>10}  exactly-once")
    for name, url in results:
        stored, kwh, rate, p50, p99 = measure(url)
        ok = stored == distinct and kwh == truth
        print(f"{name:<22}{rate:>10.0f}{p50:>10.0f}{p99:>10.0f}  {'yes' if ok else f'NO ({stored}, {kwh} != {truth})'}")


if __name__ == "__main__":
    main()
