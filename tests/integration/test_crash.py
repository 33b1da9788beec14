"""SIGKILL the hub mid-stream, restart it: exactly the distinct events are stored, usage is exact."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import orjson
import psycopg
import pytest

from tests.conftest import SHARED, Mosquitto
from tests.integration.hubproc import HubProcess, usagehub

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEVICES = 20
READINGS = 250


def _seed(tmp: Path) -> Path:
    lines = ["accounts:", "  - {id: acct}", "devices:"]
    lines += [f"  - {{id: d{i:02d}, profile: acme-em340}}" for i in range(DEVICES)]
    lines += ["bindings:"]
    lines += [f'  - {{device: d{i:02d}, account: acct, valid_from: "2026-01-01T00:00:00Z"}}' for i in range(DEVICES)]
    path = tmp / "seed.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _messages(rng: random.Random) -> tuple[list[str], Decimal]:
    """Readings of every device, shuffled per device-chunk; ~10 % published twice."""
    lines, expected = [], Decimal(0)
    for d in range(DEVICES):
        register = rng.randrange(1000, 10**6)
        first = register  # the k=1 reading is the baseline: usage is everything after it
        for k in range(1, READINGS + 1):
            if k > 1:
                register += rng.randrange(0, 500)
            body = {"seq": k, "ts": f"2026-10-{1 + k // 96:02d}T{(k % 96) // 4:02d}:{15 * (k % 4):02d}:00Z",
                    "energy_wh": register, "boot": 1}
            lines.append(f"meters/d{d:02d}/reading\t{orjson.dumps(body).decode()}")
        expected += Decimal(register - first) / 1000
    dups = rng.sample(lines, len(lines) // 10)
    rng.shuffle(lines)  # out of order on purpose: late readings split deltas
    return lines + dups, expected


def _publish(broker: Mosquitto, lines: list[str], path: Path) -> subprocess.Popen[bytes]:
    path.write_text("\n".join(lines) + "\n")
    return subprocess.Popen([sys.executable, str(SHARED / "baselines" / "pub.py"), str(path), str(broker.port), "200"],
                            stdout=subprocess.DEVNULL)


def _counts(url: str) -> tuple[int, Decimal]:
    with psycopg.connect(url) as conn:
        events = conn.execute("SELECT count(*) FROM events").fetchone()
        usage = conn.execute("SELECT coalesce(sum(quantity), 0) FROM usage_entries").fetchone()
    assert events is not None and usage is not None
    return int(events[0]), Decimal(usage[0])


def test_sigkill_mid_stream_loses_nothing_and_counts_nothing_twice(
        database_url: str, mosquitto: Mosquitto, tmp_path: Path) -> None:
    if not (SHARED / "baselines" / "pub.py").exists():
        pytest.skip("../shared/baselines/pub.py is not present")
    rng = random.Random(20261121)
    lines, expected_kwh = _messages(rng)
    distinct = DEVICES * READINGS
    hub = HubProcess(database_url, mosquitto.url, tmp_path / "data")
    assert usagehub("seed", str(_seed(tmp_path)), *hub.settings).returncode == 0
    hub.start()
    chunks = [lines[i::3] for i in range(3)]
    for n, chunk in enumerate(chunks):
        publisher = _publish(mosquitto, chunk, tmp_path / f"chunk{n}.txt")
        time.sleep(rng.uniform(0.05, 0.4))
        hub.kill()  # mid-stream: batches in flight, acks not sent
        assert publisher.wait(60) == 0
        stored, _ = _counts(database_url)
        assert stored <= distinct
        hub.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _counts(database_url)[0] < distinct:
        time.sleep(0.3)
    time.sleep(1.0)  # redeliveries still in flight must not add anything
    stored, kwh = _counts(database_url)
    assert stored == distinct
    assert kwh == expected_kwh
    assert hub.terminate() == 0
