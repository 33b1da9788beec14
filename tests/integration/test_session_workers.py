"""``serve`` with a session worker child: SIGKILL the child mid-stream; it is restarted and bills exactly."""

from __future__ import annotations

import random
import signal
import time
from decimal import Decimal
from pathlib import Path

import psutil
import psycopg
import pytest

from tests.conftest import SHARED, Mosquitto
from tests.integration.hubproc import HubProcess, usagehub
from tests.integration.test_crash import _publish, _seed
from tests.peers import time_scale

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _messages(rng: random.Random, devices: int = 5, readings: int = 150) -> tuple[list[str], Decimal]:
    """Readings of a few devices (of the crash test's seed), shuffled, ~10 % twice; the kWh they add."""
    lines, expected = [], Decimal(0)
    for d in range(devices):
        first = register = rng.randrange(1000, 10**6)
        for k in range(1, readings + 1):
            register += rng.randrange(0, 500) if k > 1 else 0
            ts = f"2026-10-{1 + k // 96:02d}T{(k % 96) // 4:02d}:{15 * (k % 4):02d}:00Z"
            lines.append(f'meters/d{d:02d}/reading\t{{"seq":{k},"ts":"{ts}","energy_wh":{register},"boot":1}}')
        expected += Decimal(register - first) / 1000
    dups = rng.sample(lines, len(lines) // 10)
    rng.shuffle(lines)
    return lines + dups, expected


def _children(hub: HubProcess) -> list[psutil.Process]:
    return hub.children("session-worker")


def _one(url: str, sql: str) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


def test_killed_session_worker_is_restarted_and_nothing_is_billed_twice(
        database_url: str, mosquitto: Mosquitto, tmp_path: Path) -> None:
    if not (SHARED / "baselines" / "pub.py").exists():
        pytest.skip("../shared/baselines/pub.py is not present")
    lines, expected_kwh = _messages(random.Random(27))
    hub = HubProcess(database_url, mosquitto.url, tmp_path / "data", extra=["--session-workers", "1"])
    assert usagehub("seed", str(_seed(tmp_path)), *hub.settings).returncode == 0
    hub.start()
    try:
        deadline = time.monotonic() + 20 * time_scale()
        while not _children(hub):
            assert time.monotonic() < deadline, hub.log.read_text()[-3000:]
            time.sleep(0.1)
        (first,) = _children(hub)
        publisher = _publish(mosquitto, lines, tmp_path / "fleet.txt")
        time.sleep(0.5)
        first.send_signal(signal.SIGKILL)  # mid-round: its transaction rolls back, its claims return
        assert publisher.wait(120) == 0
        deadline = time.monotonic() + 120 * time_scale()
        distinct = len(set(lines))
        while time.monotonic() < deadline and (
                _one(database_url, "SELECT count(*) FROM events") != distinct
                or _one(database_url, "SELECT count(*) FROM session_queue") != 0):
            time.sleep(0.3)
        assert _one(database_url, "SELECT count(*) FROM session_queue") == 0, hub.log.read_text()[-3000:]
        billed = _one(database_url, "SELECT coalesce(sum(quantity), 0) FROM billing_records")
        assert Decimal(str(billed)) == expected_kwh
        # The queue may empty before the hub notices the kill (a worker claims at once when ingest has ended,
        # quiet_s): the hub checks its children every second.
        deadline = time.monotonic() + 20 * time_scale()
        while [c.pid for c in _children(hub)] in ([], [first.pid]) and time.monotonic() < deadline:
            time.sleep(0.2)
        (second,) = _children(hub)
        assert second.pid != first.pid  # restarted by the hub
        assert "session-worker 0 exited" in hub.log.read_text()
    finally:
        assert hub.terminate() == 0
    assert not psutil.pid_exists(second.pid) or psutil.Process(second.pid).status() == psutil.STATUS_ZOMBIE
