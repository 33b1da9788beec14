"""`usagehub import` and HTTP /ingest on the hub's port, into a real PostgreSQL: each event once."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest

from tests.conftest import Mosquitto
from tests.integration.hubproc import HubProcess, usagehub

pytestmark = pytest.mark.integration

SEED = """
accounts: [{id: acct}]
devices:
  - {id: c1}
  - {id: c2}
  - {id: plug-1, profile: acme-http-meter, secrets: {http_token: tok-plug-1}}
bindings:
  - {device: c1, account: acct, valid_from: "2026-01-01T00:00:00Z"}
"""


def scalar(url: str, sql: str) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def test_import_twice_counts_once_and_bad_rows_are_quarantined(database_url: str, tmp_path: Path) -> None:
    settings = ["--database-url", database_url, "--data-dir", str(tmp_path / "data")]
    seed = tmp_path / "seed.yaml"
    seed.write_text(SEED)
    assert usagehub("seed", str(seed), *settings).returncode == 0
    rows = ["meter,ts,kwh"] + [f"c{1 + i % 2},2026-10-{1 + i // 2:02d}T00:00:00+00:00,{100 + i * 1.5}"
                               for i in range(20)]
    rows.append("c1,not-a-time,5")
    csv = tmp_path / "meters-2026-10.csv"
    csv.write_text("\n".join(rows) + "\n")
    first = usagehub("import", str(csv), *settings)
    assert first.returncode == 0, first.stderr
    second = usagehub("import", str(csv), *settings)
    assert second.returncode == 0, second.stderr
    assert scalar(database_url, "SELECT count(*) FROM events") == 20
    # c1 readings: 100, 103, ..., 127 -> 27 kWh of usage after the first (baseline) reading.
    assert scalar(database_url, "SELECT sum(quantity) FROM usage_entries WHERE device_id = 'c1'") == Decimal("27.0")
    assert scalar(database_url, "SELECT count(*) FROM quarantine WHERE reason = 'bad timestamp'") >= 1


def test_http_ingest_on_the_hub_port_is_authenticated_and_idempotent(
        database_url: str, mosquitto: Mosquitto, tmp_path: Path) -> None:
    hub = HubProcess(database_url, mosquitto.url, tmp_path / "data")
    seed = tmp_path / "seed.yaml"
    seed.write_text(SEED)
    assert usagehub("seed", str(seed), *hub.settings).returncode == 0
    hub.start()
    try:
        body = b"\n".join(orjson.dumps({"seq": i, "ts": f"2026-10-01T0{i}:00:00Z", "wh": 250}) for i in range(4))
        url = f"http://127.0.0.1:{hub.port}/ingest"
        denied = httpx.post(url, content=body, headers={"Authorization": "Bearer wrong"})
        assert denied.status_code == 401
        for _ in range(2):
            ok = httpx.post(url, content=body, headers={"Authorization": "Bearer tok-plug-1",
                                                        "Content-Type": "application/x-ndjson"})
            assert ok.status_code == 202, ok.text
        assert scalar(database_url, "SELECT count(*) FROM events WHERE device_id = 'plug-1'") == 4
        assert scalar(database_url, "SELECT sum(quantity) FROM usage_entries WHERE device_id = 'plug-1'") == \
            Decimal("1.000")
    finally:
        hub.terminate()
