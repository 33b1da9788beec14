"""MQTT identity end to end: the shipped deploy/mosquitto.conf and deploy/acl, TLS, a hub process, two tenants."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import orjson
import psycopg
import pytest

from tests.integration.hubproc import ROOT, HubProcess, usagehub
from tests.peers import free_port, require_binary

pytestmark = pytest.mark.integration

USERS = ("usagehub", "em-a", "em-b", "gw-a", "gw-b")
SEED_A = """
tenant: A
accounts: [{id: acct-a}]
devices:
  - {id: em-a, profile: acme-em340}
  - {id: gw-a, profile: acme-dc100-gateway}
  - {id: a1, gateways: [gw-a]}
bindings:
  - {device: em-a, account: acct-a, valid_from: "2026-01-01T00:00:00Z"}
  - {device: a1, account: acct-a, valid_from: "2026-01-01T00:00:00Z"}
"""
SEED_B = """
tenant: B
accounts: [{id: acct-b}]
devices:
  - {id: em-b, profile: acme-em340}
  - {id: gw-b, profile: acme-dc100-gateway}
  - {id: b1, gateways: [gw-b]}
bindings:
  - {device: em-b, account: acct-b, valid_from: "2026-01-01T00:00:00Z"}
  - {device: b1, account: acct-b, valid_from: "2026-01-01T00:00:00Z"}
"""


class ShippedBroker:
    """Mosquitto running deploy/mosquitto.conf with deploy/acl unchanged (paths and ports moved to a temp dir)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.port, self.tls_port = tmp, free_port(), free_port()
        self.password = {user: f"pw-{user}-{os.getpid()}" for user in USERS}
        certs = tmp / "certs"
        env = {**os.environ, "CERT_DIR": str(certs)}
        subprocess.run([str(ROOT / "deploy" / "make-certs"), "localhost"], check=True, env=env,
                       capture_output=True)
        self.cafile = certs / "ca.crt"
        passwd = tmp / "passwd"
        passwd.touch(mode=0o600)
        for user, pw in self.password.items():
            subprocess.run([require_binary("mosquitto_passwd"), "-b", str(passwd), user, pw], check=True)
        (tmp / "data").mkdir()
        conf = (ROOT / "deploy" / "mosquitto.conf").read_text()
        for old, new in (("/mosquitto/config/passwd", str(passwd)), ("/mosquitto/config/acl", str(ROOT / "deploy/acl")),
                         ("/mosquitto/data/", f"{tmp}/data/"), ("/mosquitto/certs/", f"{certs}/"),
                         ("listener 1883 0.0.0.0", f"listener {self.port} 127.0.0.1"),
                         ("listener 8883 0.0.0.0", f"listener {self.tls_port} 127.0.0.1")):
            assert old in conf, old
            conf = conf.replace(old, new)
        if os.geteuid() == 0:  # as root mosquitto drops to its own user, which cannot read pytest's temp dirs
            conf = "user root\n" + conf
        (tmp / "mosquitto.conf").write_text(conf)
        self.proc = subprocess.Popen([require_binary("mosquitto"), "-c", str(tmp / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.tls_port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise
                time.sleep(0.05)

    def hub_url(self) -> str:
        return f"mqtt://usagehub:{self.password['usagehub']}@127.0.0.1:{self.port}"

    def publish(self, user: str | None, topic: str, payload: bytes, *, password: str | None = None,
                tls: bool = True) -> int:
        """mosquitto_pub as ``user`` (None: anonymous) over TLS; returns its exit code."""
        args = [require_binary("mosquitto_pub"), "-h", "localhost", "-q", "1", "-t", topic, "-m", payload.decode()]
        args += ["-p", str(self.tls_port), "--cafile", str(self.cafile)] if tls else ["-p", str(self.port)]
        if user is not None:
            args += ["-u", user, "-P", password or self.password[user]]
        return subprocess.run(args, capture_output=True, timeout=20).returncode

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(5)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[ShippedBroker]:
    require_binary("openssl")
    b = ShippedBroker(tmp_path / "broker")
    yield b
    b.stop()


def reading(seq: int) -> bytes:
    return orjson.dumps({"seq": seq, "ts": "2026-10-02T12:00:00+00:00", "energy_wh": 1000 * seq, "boot": 1})


def batch(meter: str) -> bytes:
    return orjson.dumps({"readings": [{"meter": meter, "seq": 1, "ts": "2026-10-02T12:00:00+00:00",
                                       "energy_wh": 50_000_000}]})


def rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_each_credential_writes_only_its_own_devices(database_url: str, broker: ShippedBroker,
                                                     tmp_path: Path) -> None:
    hub = HubProcess(database_url, broker.hub_url(), tmp_path / "data")
    for n, text in enumerate((SEED_A, SEED_B)):
        seed = tmp_path / f"seed{n}.yaml"
        seed.write_text(text)
        result = usagehub("seed", str(seed), *hub.settings)
        assert result.returncode == 0, result.stderr
    hub.start()
    try:
        # Refused by the broker: no password, a wrong password, and plain MQTT from outside still needs one.
        assert broker.publish(None, "meters/em-a/reading", reading(9)) != 0
        assert broker.publish("em-a", "meters/em-a/reading", reading(9), password="guess") != 0
        assert broker.publish(None, "meters/em-a/reading", reading(9), tls=False) != 0
        # Accepted by the broker but dropped by the shipped ACL (another device's or gateway's topic).
        assert broker.publish("em-a", "meters/em-b/reading", reading(1)) == 0
        assert broker.publish("gw-a", "gateways/gw-b/batch", batch("b1")) == 0
        # Delivered to the hub, which refuses it: gw-a names tenant B's device b1.
        assert broker.publish("gw-a", "gateways/gw-a/batch", batch("b1")) == 0
        # Allowed: each credential for itself, the gateway for the device behind it.
        assert broker.publish("em-a", "meters/em-a/reading", reading(1)) == 0
        assert broker.publish("em-b", "meters/em-b/reading", reading(2)) == 0
        assert broker.publish("gw-a", "gateways/gw-a/batch", batch("a1")) == 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(rows(database_url, "SELECT 1 FROM events")) < 3:
            time.sleep(0.2)
        assert rows(database_url, "SELECT device_id, event_id FROM events ORDER BY 1") == [
            ("a1", "1"), ("em-a", "1"), ("em-b", "2")]
        assert rows(database_url, "SELECT reason, device_id, topic FROM quarantine") == [
            ("credential not entitled to this device", "b1", "gateways/gw-a/batch")]
    finally:
        assert hub.terminate() == 0


async def test_shipped_acl_holds_radio_gateways_and_edge_nodes_to_their_own_id(broker: ShippedBroker) -> None:
    """wmbus/ and spBv1.0/ topics (oms-meter-mqtt, sparkplug-energy-meter) under deploy/acl: the hub reads them,
    a gateway publishes only under its own username; the hub's identity check does the rest (test_identity_topics)."""
    async with aiomqtt.Client("127.0.0.1", broker.port, username="usagehub", password=broker.password["usagehub"],
                              identifier="acl-hub", timeout=5) as hub:
        await hub.subscribe("wmbus/#", qos=1)
        await hub.subscribe("spBv1.0/#", qos=1)
        for user, topic in (("gw-a", "wmbus/gw-b/telegram"), ("gw-a", "spBv1.0/plant/DDATA/gw-b/m1"),
                            ("gw-a", "spBv1.0/plant/DCMD/gw-a/m1/x"), ("em-a", "spBv1.0/STATE/usagehub"),
                            ("gw-a", "wmbus/gw-a/telegram"), ("gw-a", "spBv1.0/plant/NBIRTH/gw-a"),
                            ("gw-a", "spBv1.0/plant/DDATA/gw-a/m1")):
            assert await asyncio.to_thread(broker.publish, user, topic, b"x") == 0
        got: list[str] = []
        async with asyncio.timeout(10):
            async for message in hub.messages:
                got.append(str(message.topic))
                if len(got) == 3:
                    break
    assert got == ["wmbus/gw-a/telegram", "spBv1.0/plant/NBIRTH/gw-a", "spBv1.0/plant/DDATA/gw-a/m1"]
