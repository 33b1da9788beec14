"""End to end over a real Mosquitto: mosquitto_pub -> hub process -> PostgreSQL -> GraphQL."""

from __future__ import annotations

import subprocess
import time
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import Mosquitto
from tests.integration.hubproc import HubProcess, usagehub
from tests.peers import require_binary

pytestmark = pytest.mark.integration

SEED = """
accounts:
  - {id: house-1, name: First house, timezone: Europe/Berlin}
  - {id: shop-2, name: Corner shop, timezone: Europe/Berlin}
devices:
  - {id: em-1, profile: acme-em340}
  - {id: em-2, profile: acme-em340}
  - {id: ax-1, profile: acme-alarm-ax}
bindings:
  - {device: em-1, account: house-1, valid_from: "2026-01-01T00:00:00+00:00"}
  - {device: em-2, account: shop-2, valid_from: "2026-01-01T00:00:00+00:00"}
  - {device: ax-1, account: house-1, valid_from: "2026-01-01T00:00:00+00:00"}
"""

USAGE = """query($a: String!) { usage(accountId: $a, since: "2026-10-01T00:00:00+02:00",
  until: "2026-11-01T00:00:00+01:00", bucket: MONTH) { start meter quantity unit } }"""


def publish(broker: Mosquitto, lines: list[tuple[str, bytes]]) -> None:
    """Publish with mosquitto_pub -q 1, one process per topic (its -l mode has one topic)."""
    binary = require_binary("mosquitto_pub")
    by_topic: dict[str, list[bytes]] = {}
    for topic, payload in lines:
        by_topic.setdefault(topic, []).append(payload)
    for topic, payloads in by_topic.items():
        # stdin stays open until the broker has acknowledged (eclipse-mosquitto #3253).
        data = b"\n".join(payloads) + b"\n"
        proc = subprocess.Popen([binary, "-p", str(broker.port), "-q", "1", "-t", topic, "-l"],
                                stdin=subprocess.PIPE)
        assert proc.stdin is not None
        proc.stdin.write(data)
        proc.stdin.flush()
        time.sleep(0.3)
        proc.stdin.close()
        assert proc.wait(20) == 0


def wait_for(predicate, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


@pytest.fixture
def hub(database_url: str, mosquitto: Mosquitto, tmp_path: Path):  # type: ignore[no-untyped-def]
    seed = tmp_path / "seed.yaml"
    seed.write_text(SEED)
    process = HubProcess(database_url, mosquitto.url, tmp_path / "data")
    result = usagehub("seed", str(seed), *process.settings)
    assert result.returncode == 0, result.stderr
    process.start()
    yield process
    if process.proc and process.proc.poll() is None:
        process.terminate()


def meter(seq: int, day: int, wh: int) -> bytes:
    return orjson.dumps({"seq": seq, "ts": f"2026-10-{day:02d}T12:00:00+02:00", "energy_wh": wh, "boot": 1})


def test_readings_become_exact_monthly_usage_and_bad_messages_are_quarantined(
        hub: HubProcess, mosquitto: Mosquitto) -> None:
    key = hub.key("admin")
    lines = [("meters/em-1/reading", meter(i, i, 100_000 + 1234 * i)) for i in range(1, 11)]
    lines += [("meters/em-1/reading", meter(3, 3, 100_000 + 1234 * 3))]        # a replay
    lines += [("meters/em-2/reading", meter(i, i, 7_000 + 3 * i)) for i in range(1, 5)]
    lines += [("security/ax-1/event", orjson.dumps({"id": i, "t": 1790848800000 + i, "type": "door_open"}))
              for i in range(1, 8)]
    bad = [("meters/em-1/reading", b"{not json"),
           ("meters/em-9/reading", meter(1, 1, 5)),
           ("meters/em-1/reading", orjson.dumps({"seq": 99, "energy_wh": 5})),
           ("meters/em-1/reading", orjson.dumps({"seq": 98, "ts": "2026-10-02T00:00:00Z", "energy_wh": -1})),
           ("nobody/listens/here", b"{}")]
    publish(mosquitto, lines + bad[:4])
    publish(mosquitto, [("meters/x/unknown-suffix", b"{}")])

    stats_q = "{ ingestStats { accepted duplicates quarantined } }"
    assert wait_for(lambda: hub.graphql(stats_q, key)["data"]["ingestStats"]["quarantined"] >= 4)
    stats = wait_for(lambda: (s := hub.graphql(stats_q, key)["data"]["ingestStats"])["accepted"] >= 21 and s)
    # 10 + 4 register readings x (energy) + power absent, 7 door events: 21 events; the replay is a duplicate.
    assert stats == {"accepted": 21, "duplicates": 1, "quarantined": 4}

    usage = hub.graphql(USAGE, key, a="house-1")["data"]["usage"]
    assert {u["meter"]: (Decimal(u["quantity"]), u["unit"]) for u in usage} == {
        "energy": (Decimal("11.106"), "kWh"), "door_openings": (Decimal(7), "count")}
    assert usage[0]["start"] == "2026-10-01T00:00:00+02:00"  # month bucket in the account's zone
    shop = hub.graphql(USAGE, key, a="shop-2")["data"]["usage"]
    assert [(u["meter"], Decimal(u["quantity"])) for u in shop] == [("energy", Decimal("0.009"))]

    quarantine = hub.graphql("{ quarantine(first: 50) { edges { node { reason topic payloadText } } } }", key)
    reasons = sorted(e["node"]["reason"] for e in quarantine["data"]["quarantine"]["edges"])
    assert reasons == ["missing field", "not JSON", "unknown device", "value out of range"]

    events = hub.graphql('{ events(deviceId: "em-1", meter: "energy", first: 4) '
                         '{ edges { node { eventId value } } pageInfo { hasNextPage endCursor } } }', key)
    page = events["data"]["events"]
    assert [e["node"]["eventId"] for e in page["edges"]] == ["1", "2", "3", "4"]
    assert page["pageInfo"]["hasNextPage"] is True

    metrics = httpx.get(f"http://127.0.0.1:{hub.port}/metrics").text
    assert 'usagehub_quarantined_total{reason="not JSON"} 1.0' in metrics
    assert "usagehub_events_accepted_total 21.0" in metrics
    assert hub.terminate() == 0


def test_roles_limit_what_a_key_can_do(hub: HubProcess) -> None:
    analytics, billing, operator = hub.key("analytics"), hub.key("billing"), hub.key("operator")
    register = 'mutation { registerDevice(device: {id: "new-1"}) { id } }'
    for key in (analytics, billing):
        answer = hub.graphql(register, key)
        assert answer["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert hub.graphql(register, operator)["data"]["registerDevice"]["id"] == "new-1"
    assert hub.graphql("{ quarantine { edges { cursor } } }", analytics)["errors"][0]["extensions"]["code"] == \
        "FORBIDDEN"
    # Account ids and names are personal data: an analytics key needs a grant (issue 9, privacy).
    accounts = "{ accounts { edges { node { id } } } }"
    assert hub.graphql(accounts, analytics)["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert "errors" not in hub.graphql(accounts, billing)
    granted = usagehub("analytics", "grant-personal", analytics.split("_")[1], *hub.settings)
    assert granted.returncode == 0, granted.stderr
    assert "errors" not in hub.graphql(accounts, analytics)
    no_key = httpx.post(f"http://127.0.0.1:{hub.port}/graphql", json={"query": "{ accounts { edges { cursor } } }"})
    assert no_key.status_code == 401
    bad_key = httpx.post(f"http://127.0.0.1:{hub.port}/graphql", json={"query": "{ accounts { edges { cursor } } }"},
                         headers={"Authorization": "Bearer uh_nope_nope"})
    assert bad_key.status_code == 401


def test_graphql_registers_and_binds_with_validity_ranges(hub: HubProcess) -> None:
    key = hub.key("operator")
    q = """mutation { registerAccount(account: {id: "acc-9", timezone: "Europe/Paris"}) { id timezone }
      registerDevice(device: {id: "dev-9", profileId: "acme-em340"}) { id } }"""
    assert "errors" not in hub.graphql(q, key)
    bind = """mutation($a: String!, $f: DateTime!) { bindDevice(deviceId: "dev-9", accountId: $a, validFrom: $f)
      { deviceId accountId validFrom validTo } }"""
    first = hub.graphql(bind, key, a="acc-9", f="2026-01-01T00:00:00+00:00")
    assert first["data"]["bindDevice"]["validTo"] is None
    assert hub.graphql(bind, key, a="house-1", f="2026-06-01T00:00:00+00:00")["data"]
    bindings = hub.graphql('{ bindings(deviceId: "dev-9") { accountId validFrom validTo } }', key)["data"]["bindings"]
    assert [(b["accountId"], b["validTo"]) for b in bindings] == [("acc-9", "2026-06-01T00:00:00+00:00"),
                                                                  ("house-1", None)]
    overlap = hub.graphql(bind, key, a="acc-9", f="2026-03-01T00:00:00+00:00")
    assert overlap["errors"][0]["extensions"]["code"] == "BINDING_OVERLAP"
    naive = hub.graphql(bind, key, a="acc-9", f="2026-03-01T00:00:00")
    assert "errors" in naive
