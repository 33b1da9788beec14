"""A Mosquitto restart under ``usagehub serve``: MQTT ingest, Sparkplug B and the prepaid client all come back.

Each is not ready while the broker is down (``/readyz`` names it), logs the outage once and the recovery
once (whatever the number of failed attempts), and counts both in ``/metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import Mosquitto
from tests.integration.hubproc import HubProcess
from tests.peers import time_scale

pytestmark = pytest.mark.integration

CLIENTS = ("mqtt", "sparkplug", "mqtt-prepaid")


def _wait(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout * time_scale()
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _metrics(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {name: float(value) for name, value in (line.rsplit(" ", 1) for line in text.splitlines()
                                                    if line.startswith("usagehub_adapter_"))}


def test_every_mqtt_client_reconnects_after_a_broker_restart_logged_and_counted_once(
        database_url: str, mosquitto: Mosquitto, tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text("[adapters.sparkplug]\ngroups = [\"plant\"]\n")
    hub = HubProcess(database_url, mosquitto.url, tmp_path / "data",
                     extra=["--config", str(config), "--session-workers", "0"])
    hub.start(timeout=60)
    readyz = f"http://127.0.0.1:{hub.port}/readyz"
    try:
        assert httpx.get(readyz, timeout=5).json()["adapters"] == dict.fromkeys(CLIENTS, True)

        mosquitto.stop()
        _wait(lambda: not any(httpx.get(readyz, timeout=5).json()["adapters"].values()), 20)
        assert httpx.get(readyz, timeout=5).status_code == 503
        time.sleep(3)  # reconnect attempts fail meanwhile (backoff from 0.5 s): still one outage each
        mosquitto.start()
        _wait(lambda: httpx.get(readyz, timeout=5).status_code == 200, 40)
        metrics = _metrics(hub.port)
        for name in CLIENTS:
            assert metrics[f'usagehub_adapter_up{{adapter="{name}"}}'] == 1, name
            assert metrics[f'usagehub_adapter_outages_total{{adapter="{name}"}}'] == 1, name
            assert metrics[f'usagehub_adapter_recoveries_total{{adapter="{name}"}}'] == 1, name
    finally:
        assert hub.terminate() == 0
    log = hub.log.read_text()
    for name in CLIENTS:
        assert log.count(f"{name} connection lost") == 1, (name, log[-3000:])
        assert log.count(f"{name} recovered after") == 1, (name, log[-3000:])
