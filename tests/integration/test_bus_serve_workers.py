"""``usagehub serve --workers 2``: embedded nats-server and two worker processes behind one command.

Readings over MQTT are billed exactly; a SIGKILLed hub takes its nats-server and
workers with it (no orphans holding the stream), and the restarted hub carries on
from the stream it left on disk.
"""

from __future__ import annotations

import contextlib
import socket
import time
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import pytest

from tests.bus.conftest import nats_binary, scalar
from tests.conftest import Mosquitto
from tests.integration.hubproc import HubProcess, usagehub
from tests.integration.test_mqtt_e2e import publish
from tests.peers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = """accounts: [{id: home-1}, {id: shop-1}]
devices: [{id: em-1, profile: acme-em340}, {id: em-2, profile: acme-em340}]
bindings:
  - {device: em-1, account: home-1, valid_from: "2026-01-01T00:00:00Z"}
  - {device: em-2, account: shop-1, valid_from: "2026-01-01T00:00:00Z"}
"""


def readings(device: str, seqs: range, step_wh: int) -> list[tuple[str, bytes]]:
    return [(f"meters/{device}/reading",
             orjson.dumps({"seq": k, "ts": f"2026-10-02T{k // 4:02d}:{15 * (k % 4):02d}:00Z",
                           "energy_wh": 5000 + step_wh * k, "boot": 1})) for k in seqs]


def processes_of(data_dir: Path, hub: HubProcess) -> list[int]:
    """Live processes the hub started: its nats-server (config under data_dir) and workers (environment)."""
    mark, found = str(data_dir.resolve()).encode(), []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or (hub.proc is not None and int(proc.name) == hub.proc.pid):
            continue
        try:
            ours = mark + b"/nats" in (proc / "cmdline").read_bytes() \
                or b"USAGEHUB_DATA_DIR=" + mark in (proc / "environ").read_bytes()
            if ours and b"State:\tZ" not in (proc / "status").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def wait_for(predicate, timeout: float = 40.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return bool(predicate())


def two_free_ports() -> int:
    """A port ``p`` such that ``p`` and ``p + 1`` are both free now."""
    for _ in range(50):
        port = free_port()
        with contextlib.suppress(OSError), socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", port))
            b.bind(("127.0.0.1", port + 1))
            return port
    raise RuntimeError("no two adjacent free ports")


def worker_accepted(port: int) -> float:
    """``usagehub_events_accepted_total`` of the worker serving /metrics on ``port``."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("usagehub_events_accepted_total"))


def usage(url: str) -> Decimal:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT coalesce(sum(quantity), 0) FROM usage_entries").fetchone()
    return Decimal(row[0]) if row else Decimal(0)


def test_serve_with_workers_bills_exactly_and_leaves_no_orphans(database_url: str, mosquitto: Mosquitto,
                                                                 tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 request: pytest.FixtureRequest) -> None:
    nats_binary()
    metrics_port = two_free_ports()
    monkeypatch.setenv("USAGEHUB_WORKER_METRICS_PORT", str(metrics_port))  # worker N: metrics_port + N
    data = tmp_path / "data"
    hub = HubProcess(database_url, mosquitto.url, data, extra=["--workers", "2"])
    # A failed assertion must not leave the hub, its nats-server and workers running.
    request.addfinalizer(lambda: hub.proc is not None and hub.proc.poll() is None and hub.terminate() == 0)
    (tmp_path / "seed.yaml").write_text(SEED)
    assert usagehub("seed", str(tmp_path / "seed.yaml"), *hub.settings).returncode == 0
    hub.start(timeout=60)
    first = readings("em-1", range(1, 21), 100) + readings("em-2", range(1, 21), 250)
    publish(mosquitto, first + first[:5])  # five resent
    events = "SELECT count(*) FROM events"
    assert wait_for(lambda: scalar(database_url, events) == 40), hub.log.read_text()[-3000:]
    assert sorted(p.name for p in (data / "workers").iterdir()) == ["worker-0.log", "worker-1.log"]
    assert len(processes_of(data, hub)) == 3  # nats-server and two workers
    # Each worker serves its own /metrics: what it stored, counted where it committed (both devices
    # may fall in one worker's partitions, so only the sum is known).
    accepted = [worker_accepted(metrics_port + i) for i in (0, 1)]
    assert sum(accepted) == 40, accepted
    hub.kill()
    left = lambda: [(Path(f"/proc/{p}/cmdline").read_bytes()[:300], Path(f"/proc/{p}/status").read_text()[:200]) for p in processes_of(data, hub)]  # noqa
    assert wait_for(lambda: not processes_of(data, hub), 30), left()
    hub.start(timeout=60)
    later = readings("em-1", range(21, 31), 100) + readings("em-2", range(21, 31), 250)
    publish(mosquitto, later + first[-3:])
    assert wait_for(lambda: scalar(database_url, events) == 60), hub.log.read_text()[-3000:]
    assert wait_for(lambda: usage(database_url) == Decimal(29 * 100 + 29 * 250) / 1000)
    assert hub.terminate() == 0
    assert wait_for(lambda: not processes_of(data, hub), 30)
    assert scalar(database_url, events) == 60
