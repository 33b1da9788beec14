"""Mosquitto and nats-server restart under ``usagehub serve --bus``: every connection of the hub comes back.

MQTT ingest, Sparkplug B, the prepaid client and the bus are each not ready while their server is down
(``/readyz`` names them), log the outage once and the recovery once (whatever the number of failed
attempts), and count both in ``/metrics``. One hub for all four: a hub start costs seconds of CI.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.bus.conftest import nats_binary
from tests.conftest import Mosquitto
from tests.integration.hubproc import HubProcess
from tests.peers import require_binary, time_scale
from usagehub.runtime.natsd import NatsServer

pytestmark = pytest.mark.integration

CLIENTS = ("mqtt", "sparkplug", "mqtt-prepaid", "bus")


def _wait(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout * time_scale()
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _metrics(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {name: float(value) for name, value in (line.rsplit(" ", 1) for line in text.splitlines()
                                                    if line.startswith("usagehub_adapter_"))}


def test_every_connection_comes_back_after_its_server_restarts_logged_and_counted_once(
        database_url: str, mosquitto: Mosquitto, tmp_path: Path) -> None:
    nats_binary()
    nats = NatsServer(store_dir=tmp_path / "nats" / "js", token="bus-test-token")
    nats.start(log_file=tmp_path / "nats.log")
    config = tmp_path / "hub.toml"
    config.write_text("[adapters.sparkplug]\ngroups = [\"plant\"]\n")
    hub = HubProcess(database_url, mosquitto.url, tmp_path / "data",
                     extra=["--config", str(config), "--bus", nats.url])
    try:
        hub.start(timeout=60)
        readyz = f"http://127.0.0.1:{hub.port}/readyz"
        assert httpx.get(readyz, timeout=5).json()["adapters"] == dict.fromkeys(CLIENTS, True)

        mosquitto.stop()
        nats.stop()
        _wait(lambda: not any(httpx.get(readyz, timeout=5).json()["adapters"].values()), 20)
        assert httpx.get(readyz, timeout=5).status_code == 503
        assert all(v == 0 for k, v in _metrics(hub.port).items() if k.startswith("usagehub_adapter_up{"))
        time.sleep(3)  # reconnect attempts fail meanwhile (backoff from 0.5 s): still one outage each
        mosquitto.start()
        nats.start(log_file=tmp_path / "nats.log")
        _wait(lambda: httpx.get(readyz, timeout=5).status_code == 200, 40)
        metrics = _metrics(hub.port)
        for name in CLIENTS:
            assert metrics[f'usagehub_adapter_up{{adapter="{name}"}}'] == 1, name
            assert metrics[f'usagehub_adapter_outages_total{{adapter="{name}"}}'] == 1, name
            assert metrics[f'usagehub_adapter_recoveries_total{{adapter="{name}"}}'] == 1, name
        assert hub.terminate() == 0
    finally:
        if hub.proc is not None and hub.proc.poll() is None:
            hub.kill()
        nats.stop()
    log = hub.log.read_text()
    for name in CLIENTS:  # a clean stop is not an outage either
        assert log.count(f"{name} connection lost") == 1, (name, log[-3000:])
        assert log.count(f"{name} recovered after") == 1, (name, log[-3000:])
    assert "bus-test-token" not in log  # the bus servers are logged without their token


@pytest.mark.parametrize("broker", ["stopped", "hung"])
def test_a_hub_whose_broker_is_gone_stops_on_sigterm(database_url: str, mosquitto: Mosquitto, tmp_path: Path,
                                                     broker: str) -> None:
    """The broker dies or hangs with a backlog, then the hub is stopped: it exits, within the bounds of its
    stop (a soak's hub ignored SIGTERM: the MQTT disconnect timed out during the cancel, and the adapter
    took the timeout for a lost connection and reconnected for ever)."""
    hub = HubProcess(database_url, mosquitto.url, tmp_path / "data", extra=["--session-workers", "1"])
    try:
        hub.start(timeout=60)
        readyz = f"http://127.0.0.1:{hub.port}/readyz"
        lines = tmp_path / "backlog.txt"  # a backlog: the hub is behind when the broker dies
        lines.write_text("".join(f'{{"seq": {i}, "ts": "2026-10-01T00:00:00Z", "energy_wh": {i}}}\n'
                                 for i in range(60_000)))
        with lines.open("rb") as stdin:
            subprocess.run([require_binary("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(mosquitto.port), "-q", "1",
                            "-t", "meters/m1/reading", "-l"], stdin=stdin, check=True, timeout=120)
        if broker == "hung":  # the connection stays open; nothing answers (a frozen broker or a dead link)
            assert mosquitto.proc is not None
            mosquitto.proc.send_signal(signal.SIGSTOP)
        else:
            mosquitto.stop()
            _wait(lambda: httpx.get(readyz, timeout=5).status_code == 503, 20)
        started = time.monotonic()
        assert hub.terminate(timeout_s=45) == 0
        assert time.monotonic() - started < 40  # the drain's bound (30 s) is for a database that is gone
    finally:
        if hub.proc is not None and hub.proc.poll() is None:
            hub.kill()
        if mosquitto.proc is not None and mosquitto.proc.poll() is None:
            mosquitto.proc.send_signal(signal.SIGCONT)
