"""Chaos, with real parts: during one replay with late and duplicate data the hub is SIGKILLed, Mosquitto
(with persistence) is restarted and the external PostgreSQL crashes and comes back. Billed totals are exact
and nothing is quarantined twice."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import SHARED
from tests.integration import test_crash
from tests.integration.faultpeers import ExternalPostgres, PersistentMosquitto
from tests.integration.hubproc import HubProcess, usagehub
from tests.integration.test_crash import _counts, _messages, _publish, _seed
from tests.peers import require_binary

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BAD = 12  # distinct undecodable messages, each published twice
DEVICES, READINGS = 10, 120  # smaller than test_crash: the faults, not the volume, are under test


@pytest.fixture
def external_pg() -> Iterator[ExternalPostgres]:
    require_binary("mosquitto")
    server = ExternalPostgres()
    server.init()
    server.start()
    yield server
    server.remove()


def _quarantine(url: str) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT payload) FROM quarantine").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _wait(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def _metric(hub: HubProcess, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{hub.port}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_sigkill_broker_restart_and_database_crash_bill_exactly(external_pg: ExternalPostgres,
                                                                tmp_path: Path) -> None:
    if not (SHARED / "baselines" / "pub.py").exists():
        pytest.skip("../shared/baselines/pub.py is not present")
    broker = PersistentMosquitto(tmp_path)
    broker.start()
    try:
        _run(external_pg, broker, tmp_path)
    finally:
        broker.remove()


def _run(pg: ExternalPostgres, broker: PersistentMosquitto, tmp: Path) -> None:
    rng = random.Random(20261127)
    with pytest.MonkeyPatch.context() as patch:  # test_crash's generator, at this test's size
        patch.setattr(test_crash, "DEVICES", DEVICES)
        patch.setattr(test_crash, "READINGS", READINGS)
        lines, expected_kwh = _messages(rng)
        seed = _seed(tmp)
    bad = [f"meters/d{i % DEVICES:02d}/reading\tnot json {i}" for i in range(BAD)]
    lines = lines + bad + bad  # a bad message sent twice is still one quarantine item
    rng.shuffle(lines)
    hub = HubProcess(pg.url, broker.url, tmp / "data")
    try:
        _faults(hub, pg, broker, lines, seed, expected_kwh, rng, tmp)
    finally:  # a failed assertion must not leave a hub running
        if hub.proc is not None and hub.proc.poll() is None:
            hub.proc.kill()
            hub.proc.wait(10)


def _faults(hub: HubProcess, pg: ExternalPostgres, broker: PersistentMosquitto, lines: list[str], seed: Path,
            expected_kwh: Decimal, rng: random.Random, tmp: Path) -> None:
    assert usagehub("seed", str(seed), *hub.settings).returncode == 0
    hub.start()
    distinct = DEVICES * READINGS
    chunks = [lines[i::3] for i in range(3)]

    # 1. SIGKILL mid-stream: batches in flight, acks not sent; the broker redelivers.
    publisher = _publish(broker, chunks[0], tmp / "chunk0.txt")
    time.sleep(rng.uniform(0.05, 0.3))
    hub.kill()
    assert publisher.wait(60) == 0
    hub.start()

    # 2. Mosquitto restarts (clean stop, persistence) while the hub drains: it reconnects by itself.
    assert _publish(broker, chunks[1], tmp / "chunk1.txt").wait(60) == 0
    broker.stop()
    _wait(lambda: httpx.get(f"http://127.0.0.1:{hub.port}/readyz", timeout=5).status_code == 503, 15)
    broker.start()
    _wait(lambda: httpx.get(f"http://127.0.0.1:{hub.port}/readyz", timeout=5).status_code == 200, 30)

    # 3. PostgreSQL crashes mid-stream and comes back: batches are retried, nothing is lost or doubled.
    publisher = _publish(broker, chunks[2], tmp / "chunk2.txt")
    time.sleep(0.2)
    pg.crash()
    time.sleep(1.0)
    pg.start()
    assert publisher.wait(60) == 0

    deadline = time.monotonic() + 90  # generous for a loaded CI machine; ~10 s on a quiet one
    while time.monotonic() < deadline and (_counts(pg.url)[0] < distinct or _quarantine(pg.url)[0] < BAD):
        time.sleep(0.3)
    time.sleep(1.0)  # redeliveries still in flight must not add anything
    stored, kwh = _counts(pg.url)
    assert stored == distinct
    assert kwh == expected_kwh
    assert _quarantine(pg.url) == (BAD, BAD)
    assert _metric(hub, 'usagehub_adapter_recoveries_total{adapter="mqtt"}') >= 1
    assert httpx.get(f"http://127.0.0.1:{hub.port}/readyz", timeout=5).status_code == 200
    assert hub.terminate() == 0
