"""Rating through the real ASGI app (GraphQL and exports, in-process) over a real PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.storage.test_rating_settlement import READINGS, VENDORS
from tests.storage.test_rating_support import GRADUATED_DE, account_with_meter, feed_readings, wired
from usagehub.analytics.service import AnalyticsService
from usagehub.core.invoice import invoice_to_json
from usagehub.graphql.context import Services
from usagehub.rating.service import RatingService
from usagehub.storage.keys import ApiKeys
from usagehub.storage.queries import Reads
from usagehub.storage.registry import Registry
from usagehub.web.app import create_app
from usagehub.web.exports import export_routes


class Api:
    """A client of the in-process app with one key per role."""

    def __init__(self, client: httpx.AsyncClient, keys: dict[str, str], rating: RatingService) -> None:
        self.client, self.keys, self.rating = client, keys, rating

    async def gql(self, role: str, query: str, **variables: Any) -> dict[str, Any]:
        response = await self.client.post("/graphql", json={"query": query, "variables": variables},
                                          headers={"Authorization": f"Bearer {self.keys[role]}"})
        body: dict[str, Any] = response.json()
        return body

    async def get(self, path: str, role: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[role]}"} if role else {}
        return await self.client.get(path, headers=headers)


@pytest.fixture
async def api(pool: AsyncConnectionPool) -> AsyncIterator[Api]:
    pipeline, billing, rating = wired(pool)
    await account_with_meter(pool, "a1", "m1")
    await rating.start()
    await feed_readings(pipeline, "m1", READINGS)

    async def replay(_: list[int]) -> list[Any]:
        return []

    keys = ApiKeys(pool)
    analytics = AnalyticsService(pool)
    services = Services(registry=Registry(pool), reads=Reads(pool), ingest_totals={}, replay=replay, extra={},
                        billing=billing, rating=rating, analytics=analytics)
    app = create_app(services, keys, ready=lambda: True, extra_routes=export_routes(rating, keys))
    tokens = {role: (await keys.create(role=role))[0] for role in ("admin", "billing", "analytics", "operator")}
    tokens["other-tenant"] = (await keys.create(role="billing", tenant="elsewhere"))[0]
    tokens["analytics-personal"], granted = await keys.create(role="analytics")
    await analytics.grant_personal(granted.key_id)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client:
        yield Api(client, tokens, rating)


SET_PLAN = "mutation($yaml: String, $plan: JSON) { setPricePlan(yaml: $yaml, plan: $plan) { planId revision changed } }"
PREVIEW = """query($a: String!, $p: String!) { invoicePreview(accountId: $a, period: $p) {
  accountId period { label start } rounding
  lines { number product component detail quantity unit unitPrice { amount currency } net { amount currency }
          vatRate planVersion %s }
  adjustments { number }
  vat { rate taxable { amount } vat { amount } lines }
  netTotal { amount currency } vatTotal { amount } gross { amount } unpriced { product } } }"""


async def test_plans_vat_and_invoice_preview_over_graphql(api: Api) -> None:
    denied = await api.gql("analytics", SET_PLAN, yaml=GRADUATED_DE)
    assert denied["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    bad = await api.gql("billing", SET_PLAN, yaml="plans: [{id: x}]")
    assert bad["errors"][0]["extensions"]["code"] == "INVALID_PLAN"
    done = await api.gql("billing", SET_PLAN, yaml=GRADUATED_DE)
    assert done["data"]["setPricePlan"] == [{"planId": "energy-de", "revision": 1, "changed": True}]
    flat = {"id": "energy-fr", "product": "energy", "market": "FR", "currency": "EUR", "unit": "kWh",
            "versions": [{"valid_from": "2026-01-01", "components": [{"type": "flat", "price": "0.2016"}]}]}
    assert (await api.gql("admin", SET_PLAN, plan=flat))["data"]["setPricePlan"][0]["planId"] == "energy-fr"

    plans = await api.gql("operator", '{ pricePlans(product: "energy", market: "DE") { id revision '
                                      "versions { validFrom validTo components } } }")
    (plan,) = plans["data"]["pricePlans"]
    assert plan["id"] == "energy-de" and [v["validTo"] for v in plan["versions"]] == ["2026-10-16", None]
    assert plan["versions"][1]["components"][0]["tiers"][0] == {"up_to": "100", "price": "0.32"}
    vat = await api.gql("analytics", '{ vatRates(market: "GB") { category rate source rounding } }')
    assert {"category": "domestic_energy", "rate": "5", "rounding": "half_up"} | {
        "source": "HMRC VAT Notice 701/19: fuel and power for domestic use, reduced rate"} in vat["data"]["vatRates"]

    assigned = await api.gql("billing", 'mutation { assignPlan(accountId: "a1", planId: "energy-de") '
                                        "{ accountId product planId } }")
    assert assigned["data"]["assignPlan"] == {"accountId": "a1", "product": "energy", "planId": "energy-de"}

    body = await api.gql("billing", PREVIEW % "recordIds billingRecords { id quantity status }", a="a1", p="2026-10")
    preview = body["data"]["invoicePreview"]
    assert preview["period"]["label"] == "2026-10" and preview["rounding"] == "half_up"
    assert (preview["netTotal"], preview["vatTotal"], preview["gross"]) == \
        ({"amount": "99.81", "currency": "EUR"}, {"amount": "18.96"}, {"amount": "118.77"})
    first = preview["lines"][0]
    assert (first["component"], first["quantity"], first["unitPrice"], first["net"]["amount"], first["vatRate"]) == \
        ("graduated", "100.000", {"amount": "0.30", "currency": "EUR"}, "30.00000", "19")
    assert first["recordIds"] == ["a1/2026-10/energy"]
    assert first["billingRecords"] == [{"id": "a1/2026-10/energy", "quantity": "320.000", "status": "open"}]
    assert preview["vat"] == [{"rate": "19", "taxable": {"amount": "99.81"}, "vat": {"amount": "18.96"},
                               "lines": 6}]

    # One account's invoice is personal data: analytics keys need the grant, and even then no drill-down.
    denied = await api.gql("analytics", PREVIEW % "", a="a1", p="2026-10")
    assert denied["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    totals = await api.gql("analytics-personal", PREVIEW % "", a="a1", p="2026-10")
    assert totals["data"]["invoicePreview"]["gross"] == {"amount": "118.77"}
    drill = await api.gql("analytics-personal", PREVIEW % "recordIds", a="a1", p="2026-10")
    assert drill["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    foreign = await api.gql("other-tenant", PREVIEW % "", a="a1", p="2026-10")
    assert foreign["errors"][0]["extensions"]["code"] == "UNKNOWN_ACCOUNT"
    operator = await api.gql("operator", PREVIEW % "", a="a1", p="2026-10")
    assert operator["errors"][0]["extensions"]["code"] == "FORBIDDEN"


async def test_vendors_settlement_and_exports(api: Api) -> None:
    await api.gql("billing", SET_PLAN, yaml=GRADUATED_DE)
    registered = await api.gql("billing", "mutation($y: String) { registerVendor(yaml: $y) { id revision "
                                          "rules { id type percent amount unit } } }", y=VENDORS)
    assert [v["id"] for v in registered["data"]["registerVendor"]] == ["payco", "guardco"]
    page = await api.gql("analytics", "{ vendors(first: 1) { edges { cursor node { id } } "
                                      "pageInfo { hasNextPage endCursor } } }")
    assert [e["node"]["id"] for e in page["data"]["vendors"]["edges"]] == ["guardco"]
    cursor = page["data"]["vendors"]["pageInfo"]["endCursor"]
    rest = await api.gql("analytics", "query($c: String) { vendors(first: 5, after: $c) { edges { node { id } } "
                                      "pageInfo { hasNextPage } } }", c=cursor)
    assert rest["data"]["vendors"] == {"edges": [{"node": {"id": "payco"}}], "pageInfo": {"hasNextPage": False}}

    run_q = ('mutation { runSettlement(vendorId: "guardco", period: "2026-10") { changed previousDigest '
             "statement { digest runs total { amount } totals { ruleId share { amount } } } } }")
    first = (await api.gql("billing", run_q))["data"]["runSettlement"]
    second = (await api.gql("admin", run_q))["data"]["runSettlement"]
    assert first["statement"]["digest"] == second["statement"]["digest"]
    assert (second["changed"], second["previousDigest"], second["statement"]["runs"]) == \
        (False, first["statement"]["digest"], 2)
    assert second["statement"]["total"] == {"amount": "16.38"}
    lines = await api.gql("billing", '{ settlementStatement(vendorId: "guardco", period: "2026-10") { digest '
                                     "lines(first: 2) { edges { node { transactionId ruleId share { amount } } } "
                                     "pageInfo { hasNextPage } } } }")
    statement = lines["data"]["settlementStatement"]
    assert statement["digest"] == first["statement"]["digest"]
    assert len(statement["lines"]["edges"]) == 2 and statement["lines"]["pageInfo"]["hasNextPage"]

    # Exports: the bytes of the core's documents, behind billing/admin keys.
    ok = await api.get("/exports/invoices/a1/2026-10.json", "billing")
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("application/json")
    assert ok.text == invoice_to_json((await api.rating.invoice_preview("a1", "2026-10")).preview)
    csv_text = (await api.get("/exports/invoices/a1/2026-10.csv", "admin")).text
    assert csv_text.splitlines()[-1].startswith("total,") and "118.77" in csv_text.splitlines()[-1]
    settled = await api.get("/exports/settlements/guardco/2026-10.json", "billing")
    assert json.loads(settled.text)["digest"] == first["statement"]["digest"]
    assert (await api.get("/exports/invoices/a1/2026-10.json", None)).status_code == 401
    assert (await api.get("/exports/invoices/a1/2026-10.json", "analytics")).status_code == 403
    missing = await api.get("/exports/invoices/nobody/2026-10.json", "billing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "UNKNOWN_ACCOUNT"
    assert (await api.get("/exports/invoices/a1/2026-10.json", "other-tenant")).status_code == 404
    assert (await api.get("/exports/settlements/guardco/2026-09.csv", "billing")).status_code == 404
    assert (await api.get("/exports/invoices/a1/oct.json", "billing")).status_code == 400
    assert (await api.get("/exports/invoices/a1/2026-10.pdf", "billing")).status_code == 404
