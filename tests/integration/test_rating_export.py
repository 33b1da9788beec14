"""Issue 4 on a running hub: plans loaded by the CLI, usage over HTTP ingest, the invoice exported over HTTP."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import Mosquitto
from tests.integration.hubproc import HubProcess, usagehub

pytestmark = pytest.mark.integration

SEED = """
accounts: [{id: home, market: DE, currency: EUR, timezone: Europe/Berlin}]
devices:
  - {id: plug-7, profile: acme-http-meter, secrets: {http_token: tok-plug-7}}
bindings:
  - {device: plug-7, account: home, valid_from: "2026-01-01T00:00:00Z"}
"""
PLANS = """
plans:
  - id: energy-de-flat
    product: energy
    market: DE
    currency: EUR
    unit: kWh
    versions:
      - valid_from: 2026-01-01
        components:
          - {type: flat, price: "0.40"}
          - {type: standing_charge, amount: "9.30", per: period}
"""


def test_invoice_export_over_http_from_a_running_hub(database_url: str, mosquitto: Mosquitto,
                                                     tmp_path: Path) -> None:
    hub = HubProcess(database_url, mosquitto.url, tmp_path / "data")
    (tmp_path / "seed.yaml").write_text(SEED)
    (tmp_path / "plans.yaml").write_text(PLANS)
    assert usagehub("seed", str(tmp_path / "seed.yaml"), *hub.settings).returncode == 0
    loaded = usagehub("plans", "load", str(tmp_path / "plans.yaml"), *hub.settings)
    assert loaded.returncode == 0 and "energy-de-flat: revision 1" in loaded.stdout, loaded.stdout + loaded.stderr
    hub.start()
    try:
        # 12.5 kWh on 3 October 2026 (delta meter, Wh).
        body = b"\n".join(orjson.dumps({"seq": i, "ts": f"2026-10-03T1{i}:00:00Z", "wh": 2500}) for i in range(5))
        ok = httpx.post(f"http://127.0.0.1:{hub.port}/ingest", content=body,
                        headers={"Authorization": "Bearer tok-plug-7", "Content-Type": "application/x-ndjson"})
        assert ok.status_code == 202, ok.text
        billing, analytics = hub.key("billing"), hub.key("analytics")
        url = f"http://127.0.0.1:{hub.port}/exports/invoices/home/2026-10"
        response = httpx.get(url + ".json", headers={"Authorization": f"Bearer {billing}"}, timeout=30)
        assert response.status_code == 200, response.text
        document = json.loads(response.text)
        assert document["format"] == "usagehub.invoice-preview/2"
        assert [(ln["component"], ln["quantity"], ln["net"]) for ln in document["lines"]] == \
            [("flat", "12.500", "5.00"), ("standing_charge", "31", "9.30")]
        # 14.30 net, 19 % VAT = 2.717 -> 2.72: the shipped German rate, loaded at the hub's first start.
        assert (document["net_total"], document["vat_total"], document["gross"]) == ("14.30", "2.72", "17.02")
        assert httpx.get(url + ".json", headers={"Authorization": f"Bearer {analytics}"}).status_code == 403
        assert httpx.get(url + ".json").status_code == 401

        csv_text = httpx.get(url + ".csv", headers={"Authorization": f"Bearer {billing}"}).text
        cli = usagehub("invoice", "home", "2026-10", "--format", "csv", *hub.settings)
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout == csv_text.replace("\r\n", "\n")   # the helper reads text mode
        total = [r for r in csv.DictReader(io.StringIO(csv_text)) if r["row"] == "total"]
        assert total[0]["gross"] == "17.02"
        preview = hub.graphql('{ invoicePreview(accountId: "home", period: "2026-10") { gross { amount } } }',
                              billing)
        assert preview["data"]["invoicePreview"]["gross"] == {"amount": "17.02"}
    finally:
        assert hub.terminate() == 0
