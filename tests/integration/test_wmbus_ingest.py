"""wM-Bus end to end: keys sealed at rest, telegrams over MQTT (hex), TCP and a file, into a real hub."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import psycopg
import pytest

from tests.conftest import Mosquitto
from tests.core.codecs.wmbus_vectors import mode5_telegram
from tests.integration.hubproc import HubProcess, usagehub
from tests.integration.test_mqtt_e2e import publish, wait_for
from tests.peers import free_port, time_scale
from usagehub.core.codecs.keyring import KeySealer

pytestmark = pytest.mark.integration

SECRET = "a test secret of enough length"
KEY_A, KEY_B, KEY_C = bytes(range(16)), bytes(range(16, 32)), bytes(range(32, 48))
SEED = """
accounts:
  - {id: house-1, name: First house, timezone: Europe/Berlin}
devices:
  - {id: gw1, profile: oms-meter-mqtt}     # the radio gateway publishing on wmbus/gw1/telegram
  - {id: "12345678", profile: oms-meter-mqtt, gateways: [gw1]}
  - {id: "23456789", profile: oms-meter-tcp}
  - {id: "34567890", profile: oms-meter-file}
  - {id: "45678901", profile: oms-meter-mqtt, gateways: [gw1]}
bindings:
  - {device: "12345678", account: house-1, valid_from: "2026-01-01T00:00:00+00:00"}
  - {device: "23456789", account: house-1, valid_from: "2026-01-01T00:00:00+00:00"}
  - {device: "34567890", account: house-1, valid_from: "2026-01-01T00:00:00+00:00"}
  - {device: "45678901", account: house-1, valid_from: "2026-01-01T00:00:00+00:00"}
"""
EVENTS = '{ events(deviceId: "%s", meter: "volume", first: 10) { edges { node { eventId value } } } }'


def _telegram(key: bytes, meter: str, litres: int, day: int) -> bytes:
    return mode5_telegram(key, meter, litres=litres, when=(2026, 10, day, 12, 0), access=day)


def _store_sealed(database_url: str, device: str, key: bytes) -> None:
    """What ``keys device-set`` stores, written directly (each CLI run costs seconds on a loaded machine)."""
    sealed = KeySealer(SECRET).seal(key, tenant="default", device_id=device, protocol="wmbus")
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO device_keys (tenant, device_id, protocol, sealed) VALUES ('default', %s, "
                     "'wmbus', %s)", (device, sealed))


def test_wmbus_over_mqtt_tcp_and_file(database_url: str, mosquitto: Mosquitto, tmp_path: Path) -> None:
    tcp_port = free_port()
    config = tmp_path / "hub.toml"
    config.write_text(
        f'device_key_secret = "{SECRET}"\ndevice_key_refresh_s = 0.5\n'
        f'[adapters.binary]\nlisteners = [{{profile = "oms-meter-tcp", host = "127.0.0.1", port = {tcp_port}}}]\n')
    (tmp_path / "seed.yaml").write_text(SEED)
    hub = HubProcess(database_url, mosquitto.url, tmp_path / "data", extra=["--config", str(config)])
    cli = [*hub.settings, "--config", str(config)]
    assert usagehub("seed", str(tmp_path / "seed.yaml"), *cli).returncode == 0
    result = usagehub("keys", "device-set", "12345678", "--key", KEY_A.hex(), *cli)
    assert result.returncode == 0, result.stderr
    _store_sealed(database_url, "23456789", KEY_B)
    _store_sealed(database_url, "34567890", KEY_C)
    hub.start()
    try:
        _keys_are_sealed_and_tenant_bound(database_url, cli)
        admin = hub.key("admin")
        _ingest(hub, admin, mosquitto, tcp_port, tmp_path, cli)
        _key_added_while_running(hub, admin, mosquitto, database_url)
        assert hub.terminate() == 0
    finally:
        if hub.proc and hub.proc.poll() is None:
            hub.terminate()


def _keys_are_sealed_and_tenant_bound(database_url: str, cli: list[str]) -> None:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT tenant, device_id, sealed FROM device_keys ORDER BY device_id").fetchall()
    assert [(t, d) for t, d, _ in rows] == [("default", "12345678"), ("default", "23456789"),
                                           ("default", "34567890")]
    assert all(key not in bytes(sealed) for _, _, sealed in rows for key in (KEY_A, KEY_B, KEY_C))
    hostile = usagehub("keys", "device-set", "12345678", "--key", "00" * 16, "--tenant", "other", *cli)
    assert hostile.returncode != 0  # another tenant cannot replace a key it does not own
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT tenant, sealed FROM device_keys WHERE device_id = '12345678'").fetchone()
    assert row == (rows[0][0], rows[0][2])


def _ingest(hub: HubProcess, admin: str, mosquitto: Mosquitto, tcp_port: int, tmp_path: Path,
            cli: list[str]) -> None:
    mqtt = [_telegram(KEY_A, "12345678", 1_000_000 + 250 * day, day) for day in (1, 2, 3)]
    mqtt.append(mqtt[1])  # a replayed telegram counts once
    mqtt.append(_telegram(KEY_A, "45678901", 5, 1))  # no key stored for this meter: quarantined
    publish(mosquitto, [("wmbus/gw1/telegram", t.hex().upper().encode()) for t in mqtt])
    with socket.create_connection(("127.0.0.1", tcp_port), timeout=5) as sock:
        sock.sendall(b"".join(_telegram(KEY_B, "23456789", 2_000 + day, day) for day in (1, 2)))
    lines = tmp_path / "walkby.txt"
    lines.write_text("".join(_telegram(KEY_C, "34567890", 7_000 * day, day).hex() + "\n" for day in (1, 2, 3, 4)))
    result = usagehub("import", "--profile", "oms-meter-file", str(lines), *cli)
    assert result.returncode == 0, result.stdout + result.stderr

    def volumes(device: str) -> list[str]:
        edges = hub.graphql(EVENTS % device, admin)["data"]["events"]["edges"]
        return [e["node"]["value"] for e in edges]

    assert wait_for(lambda: len(volumes("12345678")) == 3 and len(volumes("23456789")) == 2)
    assert volumes("12345678") == ["1000.25", "1000.5", "1000.75"]
    assert volumes("23456789") == ["2.001", "2.002"]
    assert volumes("34567890") == ["7", "14", "21", "28"]
    stats = hub.graphql("{ ingestStats { accepted duplicates quarantined } }", admin)["data"]["ingestStats"]
    assert stats["duplicates"] == 1 and stats["quarantined"] == 1
    quarantine = hub.graphql("{ quarantine(first: 5) { edges { node { reason } } } }", admin)
    assert [e["node"]["reason"] for e in quarantine["data"]["quarantine"]["edges"]] == ["no key for wM-Bus meter"]


def _key_added_while_running(hub: HubProcess, admin: str, mosquitto: Mosquitto, database_url: str) -> None:
    """The quarantined telegram of 45678901 decodes on replay once its key is stored (no restart)."""
    _store_sealed(database_url, "45678901", KEY_A)
    time.sleep(1.5 * time_scale())  # the hub reloads sealed keys every device_key_refresh_s (0.5 s); load slows it
    items = hub.graphql("{ quarantine(first: 5) { edges { node { id } } } }", admin)["data"]["quarantine"]["edges"]
    replayed = hub.graphql("mutation($ids: [ID!]!) { replayQuarantine(ids: $ids) { outcome reason } }", admin,
                           ids=[e["node"]["id"] for e in items])["data"]["replayQuarantine"]
    assert [r["outcome"] for r in replayed] == ["accepted"], replayed
    edges = hub.graphql(EVENTS % "45678901", admin)["data"]["events"]["edges"]
    assert [e["node"]["value"] for e in edges] == ["0.005"]
