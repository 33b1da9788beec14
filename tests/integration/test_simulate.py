"""``usagehub simulate --register`` against a fresh hub: its data is billed, not quarantined, at the rate asked."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.conftest import Mosquitto
from tests.integration.hubproc import HubProcess, usagehub

pytestmark = pytest.mark.integration


def test_simulate_registers_its_fleet_and_keeps_its_rate(database_url: str, mosquitto: Mosquitto,
                                                         tmp_path: Path) -> None:
    hub = HubProcess(database_url, mosquitto.url, tmp_path / "data")
    hub.start()
    try:
        result = usagehub("simulate", "--register", "--meters", "3", "--panels", "1", "--rate", "40",
                          "--duration-s", "3", "--database-url", database_url, "--mqtt-url", mosquitto.url)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "registered 4 devices of 3 accounts" in result.stdout
        m = re.search(r"published (\d+) messages in ([\d.]+) s \((\d+)/s\)", result.stdout)
        assert m, result.stdout
        assert 36 <= int(m.group(3)) <= 44, result.stdout  # the rate it was asked for, within 10 %
        key = hub.key()
        query = "{ ingestStats { messages accepted quarantined } accounts { edges { node { id } } } }"
        deadline = time.monotonic() + 20
        while True:
            data = hub.graphql(query, key)["data"]
            if data["ingestStats"]["messages"] >= int(m.group(1)) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert data["ingestStats"]["messages"] == int(m.group(1))
        assert data["ingestStats"]["quarantined"] == 0 and data["ingestStats"]["accepted"] > 0
        assert {e["node"]["id"] for e in data["accounts"]["edges"]} == {"sim-acct-0000", "sim-acct-0001",
                                                                         "sim-acct-0002"}
    finally:
        assert hub.terminate() == 0
