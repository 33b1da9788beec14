"""``usagehub serve --bus``: a NATS outage shows in /readyz and /metrics, logged once when lost and once when back."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.bus.conftest import nats_binary
from tests.conftest import Mosquitto
from tests.integration.hubproc import HubProcess
from tests.peers import time_scale
from usagehub.runtime.natsd import NatsServer

pytestmark = pytest.mark.integration


def _wait(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout * time_scale()
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _metric(port: int, line_start: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start + " ")]
    return values[0] if values else 0.0


def test_a_nats_outage_makes_the_hub_unready_and_is_logged_and_counted_once(
        database_url: str, mosquitto: Mosquitto, tmp_path: Path) -> None:
    nats_binary()
    nats = NatsServer(store_dir=tmp_path / "nats" / "js", token="bus-test-token")
    nats.start(log_file=tmp_path / "nats.log")
    hub = HubProcess(database_url, mosquitto.url, tmp_path / "data", extra=["--bus", nats.url])
    try:
        hub.start(timeout=60)
        readyz = f"http://127.0.0.1:{hub.port}/readyz"
        assert httpx.get(readyz, timeout=5).json()["adapters"]["bus"] is True
        assert _metric(hub.port, 'usagehub_adapter_up{adapter="bus"}') == 1

        nats.stop()
        _wait(lambda: httpx.get(readyz, timeout=5).status_code == 503, 20)
        assert httpx.get(readyz, timeout=5).json()["adapters"]["bus"] is False
        assert _metric(hub.port, 'usagehub_adapter_up{adapter="bus"}') == 0
        time.sleep(3)  # several reconnect attempts fail meanwhile: still one outage, one log line
        assert _metric(hub.port, 'usagehub_adapter_outages_total{adapter="bus"}') == 1

        nats.start(log_file=tmp_path / "nats.log")
        _wait(lambda: httpx.get(readyz, timeout=5).status_code == 200, 30)
        assert _metric(hub.port, 'usagehub_adapter_recoveries_total{adapter="bus"}') == 1
        assert _metric(hub.port, 'usagehub_adapter_up{adapter="bus"}') == 1
    finally:
        if hub.proc is not None and hub.proc.poll() is None:
            hub.terminate()
        nats.stop()
    log = hub.log.read_text()
    assert log.count("bus connection lost") == 1, log[-3000:]
    assert log.count("bus recovered after") == 1, log[-3000:]
    assert "bus-test-token" not in log  # the servers are logged without their token
