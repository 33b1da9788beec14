"""Scale-out benchmark: the same fleets through 1, 2, … bus workers, beside the single-process pipeline.

In one run, on one embedded PostgreSQL and (per bus case) one nats-server (JetStream, R=1, file storage):
  direct    the pipeline in one process, fed in-process (what ``usagehub serve`` does)      — the baseline
  bus xW    this process as the ingest node (route + publish, PubAck) → W ``usagehub worker`` processes
Two fleets, each through every case on a fresh copy of its seeded database:
  simple     MESSAGES single in-order readings of 1,000 meters in 10 accounts, 5 % resent;
             exact = stored events = distinct readings and usage kWh = the truth
  realistic  ``bench/fleet.py``'s fleet (imported, not copied): meters wrapping and rebooting, alarm panels,
             local shuffles, 5 % duplicates, 1 % 1-3 days late, a meter moving account;
             exact = billed totals per (account, product) = its truth and stored identities = distinct messages
Reported per case: events/s from the first receive to the last commit, receive → commit p50/p99
(``ingested_at`` is the storing transaction's start), pipeline batches, CPU µs per event of each part
(ingest = this process routing and publishing once set up, nats-server, the workers / the direct process, PostgreSQL),
and exactness.

  .venv/bin/python bench/scale.py [MESSAGES] [WORKERS...] [--real WEEKSxACCOUNTS] [--fleets simple,realistic]
  defaults: 10000 1 2, --real 1x40, both fleets
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import inspect
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import psutil
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import fleet as realistic  # noqa: E402
from bench.cpu import postgres_pid  # noqa: E402
from bench.scratch import scratch  # noqa: E402
from usagehub.core.events import RawMessage  # noqa: E402
from usagehub.runtime.config import HubConfig  # noqa: E402

METERS = 1000
PARTITIONS = 16
START = datetime(2026, 10, 1, tzinfo=UTC)
Msg = tuple[bytes, bytes]


@dataclass
class Fleet:
    """Messages in publishing order, a seed file, how many distinct identities, and the exactness check."""

    name: str
    messages: list[Msg]
    seed: str
    distinct: int
    exact: Callable[[str], str]  # database URL -> "yes" or what is wrong


def simple_fleet(n: int) -> Fleet:
    """``n`` readings of ``METERS`` meters in device order per meter, 5 % resent, in 10 accounts."""
    rng = random.Random(7)
    rows, registers = [], [rng.randrange(1000, 10**6) for _ in range(METERS)]
    first = list(registers)
    for k in range(n):
        d, seq = k % METERS, k // METERS + 1
        if seq > 1:
            registers[d] += rng.randrange(0, 500)
        body = {"seq": seq, "ts": (START + timedelta(minutes=15 * seq)).isoformat(), "energy_wh": registers[d],
                "boot": 1}
        rows.append((f"meters/m{d:04d}/reading".encode(), orjson.dumps(body)))
    truth = sum((Decimal(r - f) for r, f in zip(registers, first, strict=True)), Decimal(0)) / 1000
    dups = [rows[i] for i in sorted(rng.sample(range(n // 2), n // 20))]  # resent mid-stream
    lines = ["accounts:", *[f"  - {{id: a{a}}}" for a in range(10)], "devices:"]
    lines += [f"  - {{id: m{d:04d}, profile: acme-em340}}" for d in range(METERS)]
    lines += ["bindings:"] + [f'  - {{device: m{d:04d}, account: a{d % 10}, valid_from: "2026-01-01T00:00:00Z"}}'
                              for d in range(METERS)]

    def exact(url: str) -> str:
        with psycopg.connect(url) as conn:
            stored = _one(conn, "SELECT count(*) FROM events")
            row = conn.execute("SELECT coalesce(sum(quantity), 0) FROM usage_entries").fetchone()
            kwh = Decimal(row[0]) if row else Decimal(0)
        return "yes" if stored == n and kwh == truth else f"NO ({stored} events, {kwh} != {truth} kWh)"

    return Fleet("simple", rows[: n // 2] + dups + rows[n // 2:], "\n".join(lines) + "\n", n, exact)


def realistic_fleet(weeks: int, accounts: int) -> Fleet:
    """``bench/fleet.py``'s fleet and truth; exact = billed totals per (account, product) and stored identities."""
    msgs, truth, seed = realistic.fleet(weeks, accounts)
    distinct = len(set(msgs))

    def exact(url: str) -> str:
        with psycopg.connect(url) as conn:
            stored = _one(conn, "SELECT count(*) FROM (SELECT DISTINCT device_id, event_id FROM events) AS s")
            billed = {(str(r[0]), str(r[1])): Decimal(r[2]) for r in conn.execute(
                "SELECT account_id, product, sum(quantity) FROM billing_records GROUP BY 1, 2").fetchall()}
        wrong = sorted(k for k in truth.keys() | billed.keys()
                       if billed.get(k, Decimal(0)) != truth.get(k, Decimal(0)))
        if stored == distinct and not wrong:
            return "yes"
        return f"NO ({stored}/{distinct} identities; wrong: {wrong[:4]})"

    return Fleet(f"realistic {weeks}w x {accounts} accounts", msgs, seed, distinct, exact)


def _one(conn: psycopg.Connection, sql: str) -> int:  # type: ignore[type-arg]
    row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def raw(topic: bytes, payload: bytes) -> RawMessage:
    return RawMessage(transport="mqtt", topic=topic.decode(), payload=payload, received_at=datetime.now(UTC))


def with_db(server: str, name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(server)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]


def seeded_template(server: str, seed: str, tmp: Path) -> str:
    """A migrated database seeded from ``seed``, to clone per case."""
    name = f"scale_tpl_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    path = tmp / f"{name}.yaml"
    path.write_text(seed)
    subprocess.run([sys.executable, "-m", "usagehub", "seed", str(path), "--database-url", with_db(server, name),
                    "--data-dir", str(tmp), "--log-level", "WARNING"], check=True, cwd=ROOT, capture_output=True)
    return name


def clone(server: str, template: str) -> str:
    name = f"scale_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return with_db(server, name)


def cpu_s(pid: int, *, reaped: bool = False) -> float:
    """CPU seconds of a process and its live descendants (``reaped``: and of its exited, reaped children)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
        if reaped and proc is root:
            total += t.children_user + t.children_system
    return total


def measure(url: str) -> tuple[int, float, float, float, int]:
    """Stored events, events/s (first receive → last commit), latency p50/p99 in ms, pipeline batches."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), extract(epoch FROM max(ingested_at) - min(received_at)), "
            "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM ingested_at - received_at)), "
            "percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM ingested_at - received_at)) "
            "FROM events").fetchone()
        batches = _one(conn, "SELECT coalesce(sum(batches), 0) FROM ingest_totals")
    assert row is not None
    n, span = int(row[0]), float(row[1] or 0)
    # ingested_at is the transaction's start, so the span misses the last commit's tail: the same in every case.
    return n, n / span if span else 0.0, float(row[2] or 0) * 1000, float(row[3] or 0) * 1000, batches


def wait_events(url: str, distinct: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    sql = "SELECT count(*) FROM (SELECT DISTINCT device_id, event_id FROM events) AS s"
    while time.monotonic() < deadline:
        with psycopg.connect(url) as conn:
            if _one(conn, sql) >= distinct:
                return
        time.sleep(0.2)
    raise RuntimeError(f"only some of {distinct} events arrived")


async def direct(url: str, messages: list[Msg]) -> float:
    """The single-process baseline: the hub's pipeline fed in-process, like an adapter does; its CPU seconds."""
    from usagehub.runtime.assembly import build_pipeline, open_storage
    from usagehub.runtime.profile_files import load_profiles

    config = HubConfig(database_url=url)
    async with open_storage(config) as pool:
        pipeline, _ = build_pipeline(config, pool, load_profiles(config.profiles))
        started = time.process_time()  # after imports and profiles, as workers are measured once ready
        task = asyncio.create_task(pipeline.run())
        futures = [await pipeline.submit(raw(t, p)) for t, p in messages]
        await asyncio.gather(*futures)
        used = time.process_time() - started
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return used


async def publish(bus: str, url: str, messages: list[Msg], started: Callable[[], None]) -> float:
    """This process as an ingest node: route by account (as ``serve`` does), publish, wait for every PubAck.

    ``started`` is called once the ingest node is set up (imports, profiles, bindings, connection), when
    the measured part begins; returns the CPU seconds of this process from then on.
    """
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
    nc, _ = await declare(settings, name="bench-ingest")
    # ``router=`` since 2026-11-28 (routing without decoding); ``key_of=`` lets this bench run an older checkout
    # (copied into it) back to back with the current one.
    how = ({"router": router} if "router" in inspect.signature(BusPublisher).parameters
           else {"key_of": router.key_of})
    publisher = BusPublisher(nc, ProfileSet(load_profiles(config.profiles)), settings, **how)  # type: ignore[arg-type]
    started()
    cpu0 = time.process_time()
    futures = [await publisher.submit(raw(t, p)) for t, p in messages]
    await asyncio.gather(*futures)
    await publisher.flush()
    used = time.process_time() - cpu0
    await nc.close()
    return used


async def spread(url: str, fleet: Fleet, counts: list[int]) -> None:
    """How evenly the fleet's messages fall on partitions and workers: CRC-32 (in use) against a uniform hash."""
    from usagehub.bus.codec import partition_of, route
    from usagehub.core.decode import ProfileSet
    from usagehub.runtime.profile_files import load_profiles
    from usagehub.runtime.scaleout import AccountRouter
    from usagehub.storage.pool import open_pool

    pool = await open_pool(url, min_size=1, max_size=1)
    router = AccountRouter(pool)
    await router.refresh()
    await pool.close()
    profiles = ProfileSet(load_profiles(HubConfig().profiles))
    keys = [route(raw(t, p), profiles, PARTITIONS, router).key for t, p in fleet.messages]
    print(f"spread of {len(keys)} messages over {len(set(keys))} keys, {PARTITIONS} partitions "
          "(busiest share / even share; 1.00 = even):")
    def blake2b(key: str, partitions: int) -> int:
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % partitions

    for name, fn in (("crc32", partition_of), ("blake2b", blake2b)):
        parts = [fn(k, PARTITIONS) for k in keys]
        rows = []
        for w in sorted({*counts, 2, PARTITIONS} - {1}):
            load = [0] * w
            for p in parts:
                load[p % w] += 1
            rows.append(f"{w} {'workers' if w < PARTITIONS else 'partitions'} {max(load) * w / len(parts):.2f}")
        print(f"  {name:<8}" + ", ".join(rows))


@dataclass
class Result:
    case: str
    url: str
    cpu: dict[str, float]  # part -> CPU seconds


def direct_case(server: str, template: str, fleet: Fleet, tmp: Path) -> Result:
    url = clone(server, template)
    dump = tmp / f"messages-{uuid.uuid4().hex[:6]}.json"
    dump.write_bytes(orjson.dumps([(t.decode(), p.decode()) for t, p in fleet.messages]))
    pg = postgres_pid(url)
    pg0 = cpu_s(pg, reaped=True)
    out = subprocess.run([sys.executable, __file__, "--direct", url, str(dump)], cwd=ROOT, check=True,
                         stdout=subprocess.PIPE)
    own = float(out.stdout.decode().split()[-1])
    return Result("direct (1 process)", url, {"direct process": own, "postgres": cpu_s(pg, reaped=True) - pg0})


def bus_case(server: str, template: str, fleet: Fleet, workers: int, tmp: Path) -> Result:
    from usagehub.runtime.natsd import NatsServer

    url = clone(server, template)
    nats = NatsServer(store_dir=tmp / f"nats-{workers}-{uuid.uuid4().hex[:4]}" / "js")
    nats.start()
    env = {**os.environ, "USAGEHUB_BUS_PARTITIONS": str(PARTITIONS), "USAGEHUB_LOG_LEVEL": "INFO"}
    names = [tmp / f"worker-{fleet.name.split()[0]}-{workers}-{i}.log" for i in range(workers)]
    logs = [name.open("ab") for name in names]
    procs = [subprocess.Popen([sys.executable, "-m", "usagehub", "worker", "--bus", nats.url, "--index", str(i),
                               "--workers", str(workers), "--database-url", url, "--data-dir", str(tmp)],
                              cwd=ROOT, env=env, stdout=logs[i], stderr=subprocess.STDOUT) for i in range(workers)]
    cpu: dict[str, float] = {}
    try:
        wait_ready(names, procs)
        pg = postgres_pid(url)
        assert nats.proc is not None
        nats_pid = nats.proc.pid
        before: dict[str, float] = {}

        def started() -> None:  # the ingest node is set up: measure every part from here
            before.update({"nats-server": cpu_s(nats_pid), "workers": sum(cpu_s(p.pid) for p in procs),
                           "postgres": cpu_s(pg, reaped=True)})

        cpu["ingest"] = asyncio.run(publish(nats.url, url, fleet.messages, started))
        wait_events(url, fleet.distinct)
        cpu["nats-server"] = cpu_s(nats.proc.pid) - before["nats-server"]
        cpu["workers"] = sum(cpu_s(p.pid) for p in procs) - before["workers"]
        cpu["postgres"] = cpu_s(pg, reaped=True) - before["postgres"]
        time.sleep(1.0)  # late redeliveries must not add anything
        return Result(f"bus, {workers} worker{'s' if workers > 1 else ''}", url, cpu)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        for f in logs:
            f.close()
        nats.stop()


def wait_ready(logs: list[Path], procs: list[subprocess.Popen[bytes]], timeout_s: float = 120) -> None:
    """Until every worker logged "ready" (imports and profiles loaded: their start-up CPU is not measured)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise SystemExit(f"a worker exited; see {logs}")
        if all(" ready: partitions" in path.read_text(errors="replace") for path in logs):
            time.sleep(0.5)  # its first pull requests are out
            return
        time.sleep(0.1)
    raise SystemExit(f"workers not ready after {timeout_s} s; see {logs}")


def run_fleet(server: str, fleet: Fleet, counts: list[int], tmp: Path, *, spread_too: bool = True) -> None:
    template = seeded_template(server, fleet.seed, tmp)
    print(f"\n{fleet.name}: {len(fleet.messages)} messages ({fleet.distinct} distinct), {PARTITIONS} partitions, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}", flush=True)
    results = [direct_case(server, template, fleet, tmp)]
    for w in counts:
        results.append(bus_case(server, template, fleet, w, tmp))
        print(f"  done: {results[-1].case} (load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"{'case':<20}{'events/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'batches':>8}  CPU us/event{'':<40}exact")
    for r in results:
        stored, rate, p50, p99, batches = measure(r.url)
        parts = ", ".join(f"{k} {1e6 * v / max(stored, 1):.0f}" for k, v in r.cpu.items())
        total = 1e6 * sum(r.cpu.values()) / max(stored, 1)
        print(f"{r.case:<20}{rate:>9.0f}{p50:>8.0f}{p99:>8.0f}{batches:>8}  {total:>5.0f} = {parts:<44}"
              f"{fleet.exact(r.url)}", flush=True)
    if spread_too:
        asyncio.run(spread(results[0].url, fleet, counts))
    print(f"worker logs: {tmp}/worker-*.log (kept with BENCH_KEEP=1); load {os.getloadavg()[0]:.1f}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--direct":  # the baseline's own process
        rows = orjson.loads(Path(sys.argv[3]).read_bytes())
        print(asyncio.run(direct(sys.argv[2], [(t.encode(), p.encode()) for t, p in rows])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("messages", nargs="?", type=int, default=10_000)
    parser.add_argument("workers", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--real", default="1x40", help="realistic fleet: WEEKSxACCOUNTS")
    parser.add_argument("--fleets", default="simple,realistic")
    parser.add_argument("--spread-only", action="store_true", help="only the partition spread, no runs")
    parser.add_argument("--no-spread", action="store_true", help="no partition spread (an older checkout)")
    args = parser.parse_args()
    from usagehub.storage.embedded import embedded_database_url

    tmp = scratch("usagehub-scale-")
    server = embedded_database_url(tmp / "db")
    weeks, accounts = (int(x) for x in args.real.split("x"))
    fleets = {"simple": lambda: simple_fleet(args.messages), "realistic": lambda: realistic_fleet(weeks, accounts)}
    for name in args.fleets.split(","):
        if args.spread_only:
            fleet = fleets[name]()
            url = clone(server, seeded_template(server, fleet.seed, tmp))
            print(f"\n{fleet.name}:")
            asyncio.run(spread(url, fleet, args.workers or [1, 2]))
            continue
        run_fleet(server, fleets[name](), args.workers or [1, 2], tmp, spread_too=not args.no_spread)


if __name__ == "__main__":
    main()
