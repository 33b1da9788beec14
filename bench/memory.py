"""Memory after large messages: does the hub give back what a few large gateway messages took?

In one run, on one Mosquitto and one embedded PostgreSQL (all started here), a hub (`usagehub serve`):
  1. idle RSS after start and a warm-up of small readings;
  2. --count large gateway messages (--readings readings and --mb MB of diagnostics each), each waited for
     until stored; RSS peak while they pass;
  3. RSS after --settle-s of idle: the figure that must come back near the idle one.
With --trace the hub runs under tracemalloc and, at the end, writes the top allocation sites still alive
(Python objects only: what the C heap keeps beyond them is RSS minus traced).
Usage: .venv/bin/python bench/memory.py [--count 5] [--readings 20000] [--mb 8] [--trace]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.ingest import Broker, count, wait_count  # noqa: E402
from bench.rawpub import publish  # noqa: E402
from bench.scratch import scratch  # noqa: E402
from bench.soak import Fleet, free_port, seed  # noqa: E402
from usagehub.storage.embedded import embedded_database_url  # noqa: E402

# Runs the hub under tracemalloc; SIGUSR1 writes the top live allocation sites to $TRACE_OUT.
TRACED_HUB = """
import os, signal, sys, tracemalloc
tracemalloc.start(8)
def dump(*_):
    snap = tracemalloc.take_snapshot()
    with open(os.environ["TRACE_OUT"] + ".part", "w") as f:
        cur, peak = tracemalloc.get_traced_memory()
        f.write(f"traced now {cur / 2**20:.1f} MB, peak {peak / 2**20:.1f} MB\\n")
        for stat in snap.statistics("traceback")[:12]:
            f.write(f"{stat.size / 2**20:8.2f} MB in {stat.count} blocks\\n")
            f.write("\\n".join("    " + line for line in stat.traceback.format()[-8:]) + "\\n")
    os.replace(os.environ["TRACE_OUT"] + ".part", os.environ["TRACE_OUT"])
signal.signal(signal.SIGUSR1, dump)
sys.argv = ["usagehub", *sys.argv[1:]]
from usagehub.runtime.cli.main import main
main()
"""

STORED = "SELECT coalesce(sum(messages), 0) FROM ingest_totals"


def wait_ready(port: int, hub: subprocess.Popen[bytes], timeout: float = 600) -> None:
    """Until /readyz answers 200 (a hub under tracemalloc on a busy machine starts slowly)."""
    import httpx

    deadline = time.monotonic() + timeout
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


def rss_mb(proc: psutil.Process) -> float:
    return float(proc.memory_info().rss / 2**20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=5, help="large messages")
    ap.add_argument("--readings", type=int, default=20_000, help="readings per large message")
    ap.add_argument("--mb", type=int, default=8, help="diagnostics padding per large message (MB)")
    ap.add_argument("--settle-s", type=float, default=5)
    ap.add_argument("--trace", action="store_true", help="run the hub under tracemalloc, print what stays")
    args = ap.parse_args()
    tmp = scratch("usagehub-mem-")
    broker = Broker(tmp)
    url = embedded_database_url(tmp / "db")
    settings = seed(url, tmp, one_account=False)
    http_port = free_port()
    trace_out = tmp / "trace.txt"
    launcher = ["-c", TRACED_HUB] if args.trace else ["-m", "usagehub"]
    hub = subprocess.Popen([sys.executable, *launcher, "serve", *settings, "--mqtt-url",
                            f"mqtt://127.0.0.1:{broker.port}", "--http-port", str(http_port)], cwd=ROOT,
                           env={**os.environ, "TRACE_OUT": str(trace_out)})
    try:
        wait_ready(http_port, hub)
        proc = psutil.Process(hub.pid)
        fleet = Fleet(random.Random(16))
        warm = [(t.encode(), p) for t, p in fleet.tick(2000, datetime.now(UTC))]
        before = count(url, STORED)
        asyncio.run(publish(warm, broker.port))
        wait_count(url, STORED, before + len(warm))
        time.sleep(1)
        idle = rss_mb(proc)
        peak = idle
        t0 = time.monotonic()
        for _ in range(args.count):
            topic, payload = fleet.large(args.readings, args.mb << 20, datetime.now(UTC))
            before = count(url, STORED)
            asyncio.run(publish([(topic.encode(), payload)], broker.port))
            while count(url, STORED) < before + 1:
                peak = max(peak, rss_mb(proc))
                time.sleep(0.05)
            peak = max(peak, rss_mb(proc))
        took = time.monotonic() - t0
        time.sleep(args.settle_s)
        after = rss_mb(proc)
        print(f"{args.count} large messages ({len(payload) / 2**20:.1f} MB, {args.readings} readings each) "
              f"stored in {took:.1f} s", flush=True)
        print(f"hub RSS MB: idle {idle:.0f}, peak {peak:.0f}, after {args.settle_s:.0f} s idle {after:.0f} "
              f"(kept {after - idle:+.0f})", flush=True)
        if args.trace:
            hub.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not trace_out.exists():
                time.sleep(0.2)
            print(trace_out.read_text() if trace_out.exists() else "no tracemalloc dump", flush=True)
    finally:
        hub.terminate()
        hub.wait(60)
        broker.proc.terminate()


if __name__ == "__main__":
    main()
