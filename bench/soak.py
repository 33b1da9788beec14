"""Soak: a realistic fleet at half of the measured capacity; RSS, queue depth and receive->billable lag over time.

In one run, on one Mosquitto and one embedded PostgreSQL (all started here):
  1. baseline: the hub's idle RSS, then its capacity — a burst of the fleet's mix stored and billed (session
     queue replayed) as fast as it can;
  2. soak: for DURATION seconds the fleet publishes at half that capacity (or --rate): single-reading meters,
     gateway batches, ~5 % duplicates, ~3 % late readings (a day old), a few undecodable messages, and every
     --large-every-s one large gateway message (--large-readings readings, several MB);
  3. every --sample-s: hub RSS (and its session workers'), queue depth and commit wait (from /metrics),
     receive->stored lag (device time -> the storing transaction, p50/p99 of on-time readings in that window)
     and the session queue (segments waiting, age of the oldest): stored + that age = billable; ingest batches
     retried (a lock_timeout behind a session round is one), the longest session round transaction and the
     longest lock wait of any other statement (an ingest batch behind a round), sampled every 0.2 s from
     pg_stat_activity.
At the end: the medians of the first and the last 10 minutes (a third of a shorter run) — flat means no growth.
Usage: .venv/bin/python bench/soak.py [--duration-s 3600] [--rate N] [--sample-s 30]
Short run: .venv/bin/python bench/soak.py --duration-s 120 --sample-s 10 --burst 5000 --large-every-s 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import psutil
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.ingest import Broker, count, wait_count  # noqa: E402
from bench.rawpub import Publisher, publish  # noqa: E402
from bench.scratch import scratch  # noqa: E402
from usagehub.pipeline.session_worker import ROUND_NAME  # noqa: E402
from usagehub.storage.embedded import embedded_database_url  # noqa: E402

METERS, GATEWAYS, PER_GATEWAY = 2000, 20, 50


class Fleet:
    """Readings of METERS meters (households; buildings behind gateways); duplicates, late and bad messages."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.seq = [0] * METERS
        self.register = [rng.randrange(10**6) for _ in range(METERS)]
        self.sent: list[tuple[str, bytes]] = []  # recent messages, some sent again as duplicates

    def _reading(self, d: int, ts: datetime) -> dict[str, object]:
        self.seq[d] += 1
        self.register[d] += self.rng.randrange(0, 50)
        return {"meter": f"m{d:04d}", "seq": self.seq[d], "ts": ts.isoformat(), "energy_wh": self.register[d]}

    def tick(self, n: int, now: datetime) -> list[tuple[str, bytes]]:
        """About ``n`` messages for this instant."""
        out: list[tuple[str, bytes]] = []
        for _ in range(n):
            r = self.rng.random()
            if r < 0.05 and self.sent:
                out.append(self.rng.choice(self.sent))  # a QoS 1 redelivery / replayed message
            elif r < 0.08:
                body = self._reading(self.rng.randrange(METERS), now - timedelta(days=1))  # late reading
                out.append((f"meters/{body.pop('meter')}/reading", orjson.dumps(body)))
            elif r < 0.081:
                out.append(("meters/m0000/reading", b"not json %d" % self.rng.randrange(10**9)))
            elif r < 0.1:
                g = self.rng.randrange(GATEWAYS)
                readings = [self._reading(g * PER_GATEWAY + i, now) for i in range(PER_GATEWAY)]
                out.append((f"gateways/g{g:02d}/batch", orjson.dumps({"readings": readings})))
            else:
                body = self._reading(self.rng.randrange(GATEWAYS * PER_GATEWAY, METERS), now)
                out.append((f"meters/{body.pop('meter')}/reading", orjson.dumps(body)))
        self.sent = (self.sent + out[-20:])[-500:]
        return out

    def large(self, readings: int, padding: int, now: datetime) -> tuple[str, bytes]:
        """One gateway message: ``readings`` readings and ``padding`` bytes of a field no profile reads."""
        rows = [self._reading(k % METERS, now) for k in range(readings)]
        log = "".join(self.rng.choices("abcdefghij0123456789", k=padding))  # a gateway's diagnostics dump
        return "gateways/big/batch", orjson.dumps({"readings": rows, "diagnostics": log})


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def account(d: int) -> str:
    """Meters behind a gateway are one building's (one account each gateway); the others one household each."""
    return f"b{d // PER_GATEWAY:02d}" if d < GATEWAYS * PER_GATEWAY else f"h{d:04d}"


def seed(url: str, tmp: Path, one_account: bool) -> list[str]:
    path = tmp / "seed.yaml"
    owner = (lambda d: "a") if one_account else account
    lines = ["accounts:"] + [f"  - {{id: {a}}}" for a in sorted({owner(d) for d in range(METERS)})]
    lines += ["devices:"] + [f"  - {{id: m{d:04d}, profile: acme-em340}}" for d in range(METERS)]
    lines += ["bindings:"] + [f'  - {{device: m{d:04d}, account: {owner(d)}, valid_from: "2020-01-01T00:00:00Z"}}'
                              for d in range(METERS)]
    path.write_text("\n".join(lines) + "\n")
    settings = ["--database-url", url, "--data-dir", str(tmp), "--log-level", "WARNING"]
    subprocess.run([sys.executable, "-m", "usagehub", "seed", str(path), *settings], check=True, cwd=ROOT,
                   capture_output=True)
    return settings


def scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("usagehub_pipeline_queue_depth ", "usagehub_pipeline_commit_wait_seconds ",
                            "usagehub_session_queue_segments ", "usagehub_session_queue_oldest_seconds ",
                            "usagehub_batch_retries_total ")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def lag_ms(url: str, since: datetime) -> tuple[float, float]:  # NaN: nothing on time was stored
    """Device time -> storing transaction, p50/p99 ms, of on-time readings stored since ``since``."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY l), percentile_cont(0.99) WITHIN GROUP (ORDER BY l) "
            "FROM (SELECT extract(epoch FROM ingested_at - ts) * 1000 AS l FROM events "
            "WHERE ingested_at >= %s AND ts > ingested_at - interval '1 hour') x", (since,)).fetchone()
    nan = float("nan")
    return (nan if row is None or row[0] is None else float(row[0]),
            nan if row is None or row[1] is None else float(row[1]))


class RoundHolds:
    """Since the last ``take`` (pg_stat_activity, every 0.2 s): the longest transaction of a session round (from
    its start: with its own wait for the accounts), and the longest wait of another statement for a lock."""

    def __init__(self, url: str) -> None:
        self.url, self.longest, self.waited, self.stop = url, 0.0, 0.0, threading.Event()
        self.thread = threading.Thread(target=self._run, name="round-holds", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.wait(0.2):
                row = conn.execute(
                    "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)) FILTER "
                    "(WHERE application_name = %s), 0), coalesce(max(extract(epoch FROM clock_timestamp() - "
                    "query_start)) FILTER (WHERE application_name <> %s AND wait_event_type = 'Lock'), 0) "
                    "FROM pg_stat_activity", (ROUND_NAME, ROUND_NAME)).fetchone()
                if row:
                    self.longest, self.waited = max(self.longest, float(row[0])), max(self.waited, float(row[1]))

    def take(self) -> tuple[float, float]:
        taken, self.longest, self.waited = (self.longest, self.waited), 0.0, 0.0
        return taken


async def paced(port: int, fleet: Fleet, rate: float, duration_s: float, large_every_s: float,
                large_readings: int, large_bytes: int, published: list[int], errors: list[int]) -> None:
    """Publish at ``rate`` messages/s (QoS 1) in 100 ms ticks, plus a large message every ``large_every_s``.

    A raw connection (``bench.rawpub.Publisher``): aiomqtt's publisher cost time quadratic in the messages in
    flight and fell behind the rate. ``errors`` counts the ticks that found the window full (the broker or the
    machine behind: messages waited in the publisher, and the lag shows it).
    """
    async with Publisher(port, window=5000, client_id=f"soak-{uuid.uuid4().hex[:6]}") as pub:
        start = time.monotonic()
        next_large = start + large_every_s if large_every_s > 0 else float("inf")
        tick = 0
        while (now := time.monotonic()) - start < duration_s:
            tick += 1
            due = rate * (now - start) - published[0]
            batch = fleet.tick(max(0, int(due)), datetime.now(UTC))
            if now >= next_large:
                batch.append(fleet.large(large_readings, large_bytes, datetime.now(UTC)))
                next_large += large_every_s
            if pub.sent - pub.acked + len(batch) > pub.window:
                errors[0] += 1
            await pub.send(batch)
            published[0] += len(batch)
            await asyncio.sleep(max(0.0, start + tick * 0.1 - time.monotonic()))
        await pub.flush()


def measure_capacity(url: str, port: int, n: int, fleet: Fleet) -> float:
    """Messages/s of the fleet's own mix the hub makes billable when a burst of ``n`` is waiting for it.

    Billable, not only stored: the burst ends when its batches are committed and the session queue they
    filled is replayed. (Stored alone measured the ingest process while the session worker still had
    seconds of work left: half of that rate was more than the machine sustains, and the lag grew.)
    """
    burst = [(t.encode(), p) for t, p in fleet.tick(n, datetime.now(UTC) - timedelta(hours=2))]
    before = count(url, "SELECT coalesce(sum(messages), 0) FROM ingest_totals")
    t0 = time.monotonic()
    asyncio.run(publish(burst, port))
    wait_count(url, "SELECT coalesce(sum(messages), 0) FROM ingest_totals", before + n, timeout=600)
    deadline = time.monotonic() + 600
    while count(url, "SELECT count(*) FROM session_queue") > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    return n / (time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration-s", type=float, default=3600)
    ap.add_argument("--rate", type=float, default=0, help="messages/s; 0: half the measured capacity")
    ap.add_argument("--sample-s", type=float, default=30)
    ap.add_argument("--burst", type=int, default=20_000, help="messages of the capacity burst")
    ap.add_argument("--large-every-s", type=float, default=300, help="0: no large messages")
    ap.add_argument("--large-readings", type=int, default=1000, help="readings per large message")
    ap.add_argument("--large-mb", type=int, default=8, help="padding per large message (MB)")
    ap.add_argument("--one-account", action="store_true",
                    help="every meter on one account (session rounds of one huge account; see docs/faults.md)")
    args = ap.parse_args()
    tmp = scratch("usagehub-soak-")
    broker = Broker(tmp)
    url = embedded_database_url(tmp / "db")
    settings = seed(url, tmp, args.one_account)
    http_port = free_port()
    hub = subprocess.Popen([sys.executable, "-m", "usagehub", "serve", *settings, "--mqtt-url",
                            f"mqtt://127.0.0.1:{broker.port}", "--http-port", str(http_port)], cwd=ROOT)
    try:
        wait_ready(http_port, hub)
        proc = psutil.Process(hub.pid)
        idle_rss = proc.memory_info().rss / 2**20
        fleet = Fleet(random.Random(20261127))
        capacity = measure_capacity(url, broker.port, args.burst, fleet)
        rate = args.rate or capacity / 2
        print(f"baseline: idle RSS {idle_rss:.0f} MB; billable capacity {capacity:.0f} msg/s (burst of {args.burst}); "
              f"soak at {rate:.0f} msg/s for {args.duration_s:.0f} s", flush=True)
        samples = soak(url, http_port, broker.port, proc, rate, args, fleet)
        report(samples, idle_rss)
    finally:
        hub.terminate()
        hub.wait(60)
        broker.proc.terminate()


def children_rss(proc: psutil.Process) -> float:
    """RSS of the hub's child processes (session workers), MB."""
    total = 0
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a child that just ended
            total += child.memory_info().rss
    return total / 2**20


def wait_ready(port: int, hub: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if hub.poll() is not None:
            raise RuntimeError(f"hub exited with {hub.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("hub not ready")


def soak(url: str, http_port: int, mqtt_port: int, proc: psutil.Process, rate: float,
         args: argparse.Namespace, fleet: Fleet) -> list[tuple[float, ...]]:
    published, errors = [0], [0]
    samples: list[tuple[float, ...]] = []

    async def run() -> None:
        pub = asyncio.create_task(paced(mqtt_port, fleet, rate, args.duration_s, args.large_every_s,
                                        args.large_readings, args.large_mb << 20, published, errors))
        start = time.monotonic()
        print(f"{'t s':>6} {'published':>10} {'RSS MB':>7} {'queue':>6} {'wait s':>7} {'lag p50 ms':>10} "
              f"{'lag p99 ms':>10} {'wrk MB':>7} {'sess seg':>8} {'sess s':>7} {'retries':>7} {'hold s':>6} "
              f"{'wait s':>6}",
              flush=True)
        since = datetime.now(UTC)
        holds = RoundHolds(url)
        retried = 0.0
        while not pub.done():
            await asyncio.sleep(args.sample_s)
            m = await asyncio.to_thread(scrape, http_port)
            p50, p99 = await asyncio.to_thread(lag_ms, url, since)
            since = datetime.now(UTC)
            row = (time.monotonic() - start, proc.memory_info().rss / 2**20,
                   m.get("usagehub_pipeline_queue_depth", 0), m.get("usagehub_pipeline_commit_wait_seconds", 0),
                   p50, p99, children_rss(proc), m.get("usagehub_session_queue_segments", 0),
                   m.get("usagehub_session_queue_oldest_seconds", 0),
                   m.get("usagehub_batch_retries_total", 0) - retried, *holds.take())
            retried = m.get("usagehub_batch_retries_total", 0)
            samples.append(row)
            print(f"{row[0]:6.0f} {published[0]:10d} {row[1]:7.0f} {row[2]:6.0f} {row[3]:7.2f} {row[4]:10.0f} "
                  f"{row[5]:10.0f} {row[6]:7.0f} {row[7]:8.0f} {row[8]:7.1f} {row[9]:7.0f} {row[10]:6.2f} "
                  f"{row[11]:6.2f}", flush=True)
        holds.stop.set()
        await pub
        print(f"publisher ticks that found its window of 5,000 unacknowledged full: {errors[0]}", flush=True)

    asyncio.run(run())
    return samples


def report(samples: list[tuple[float, ...]], idle_rss: float) -> None:
    if len(samples) < 3:
        print("too few samples for a trend; run longer or sample more often")
        return
    end = samples[-1][0]
    window = min(600.0, end / 3)  # the first and last 10 minutes; a third of a shorter run
    first = [s for s in samples if s[0] <= window]
    last = [s for s in samples if s[0] > end - window]
    print(f"medians of the first and last {window:.0f} s ({len(first)} and {len(last)} samples):")
    for i, name in ((1, "RSS MB"), (6, "workers MB"), (2, "queue depth"), (4, "lag p50 ms"), (5, "lag p99 ms"),
                    (7, "session seg"), (8, "session s")):
        a = statistics.median([s[i] for s in first if s[i] == s[i]] or [float("nan")])
        b = statistics.median([s[i] for s in last if s[i] == s[i]] or [float("nan")])
        print(f"{name:>12}: first {a:8.1f}, last {b:8.1f}")
    print(f"      RSS MB: idle baseline {idle_rss:.0f}, max {max(s[1] for s in samples):.0f}")
    print(f"ingest batches retried (lock_timeout behind a round, or another storage failure): "
          f"{sum(s[9] for s in samples):.0f}; longest session round transaction: {max(s[10] for s in samples):.2f} s; "
          f"longest lock wait of another statement (ingest): {max(s[11] for s in samples):.2f} s")


if __name__ == "__main__":
    main()
