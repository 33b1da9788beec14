"""Operations over a real PostgreSQL: alerts (raised once, tenant-scoped, acknowledged), the silent sweep,
revenue assurance, the alerts export — through the real pipeline and the in-process ASGI app, two tenants."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette

from tests.storage.test_rating_support import _PROFILES, NOW, account_with_meter, feed_readings, wired
from tests.storage.test_sessions_billing import feed
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage
from usagehub.graphql.context import Services
from usagehub.operations.consumer import ConsumerService
from usagehub.operations.profiles import ProfileCatalog
from usagehub.operations.service import OperationsService
from usagehub.pipeline.alerts import AlertStage
from usagehub.runtime.config import SHIPPED_PROFILES
from usagehub.runtime.profile_files import load_profiles
from usagehub.storage.events import QuarantineItem, insert_quarantine
from usagehub.storage.keys import ApiKeys
from usagehub.storage.queries import Reads
from usagehub.storage.registry import Registry
from usagehub.web.app import create_app
from usagehub.web.console import console_routes
from usagehub.web.me import me_routes

DAY = NOW - timedelta(days=2)
READINGS = [(DAY + timedelta(hours=h), 1000 + 500 * h) for h in range(5)]  # 4 deltas of 0.5 kWh


def panel(device: str, event_id: int, kind: str) -> RawMessage:
    """One ACME AX panel event over MQTT."""
    body = {"id": event_id, "t": int((DAY + timedelta(hours=1)).timestamp() * 1000), "type": kind}
    return RawMessage(transport="mqtt", topic=f"security/{device}/event", payload=orjson.dumps(body),
                      received_at=NOW)


@dataclass
class World:
    client: httpx.AsyncClient
    keys: dict[str, str]
    ops: OperationsService

    async def gql(self, who: str, query: str, **variables: Any) -> dict[str, Any]:
        r = await self.client.post("/graphql", json={"query": query, "variables": variables},
                                   headers={"Authorization": f"Bearer {self.keys[who]}"})
        body: dict[str, Any] = r.json()
        return body


async def build(pool: AsyncConnectionPool, extra: dict[str, Any] | None = None
                ) -> tuple[Starlette, dict[str, str], OperationsService]:
    """Two tenants with meters and panels, a tamper each, an unbound meter, a quarantined message; the app."""
    pipeline, billing, _ = wired(pool)
    pipeline.hooks.append(AlertStage(_PROFILES).apply)
    registry = Registry(pool)
    await account_with_meter(pool, "a1", "m1")
    await account_with_meter(pool, "b1", "m2", tenant="elsewhere")
    for device, account, tenant in (("p1", "a1", "default"), ("p2", "b1", "elsewhere")):
        await registry.upsert_device(device_id=device, profile_id="acme-alarm-ax", tenant=tenant)
        await registry.bind(device_id=device, account_id=account, valid_from=DAY - timedelta(days=30), tenant=tenant)
    await registry.upsert_device(device_id="u1", profile_id="acme-em340")  # never bound: its usage waits
    await feed_readings(pipeline, "m1", READINGS)
    await feed_readings(pipeline, "m2", READINGS)
    await feed_readings(pipeline, "u1", READINGS[:3])
    # A tamper of each tenant's panel, redelivered once: one alert each. A door opening raises none.
    await feed(pipeline, [panel("p1", 1, "tamper"), panel("p1", 1, "tamper"), panel("p1", 2, "door_open"),
                          panel("p2", 1, "cover_open")])
    async with pool.connection() as conn:
        await insert_quarantine(conn, [QuarantineItem(message=panel("p1", 3, "tamper"), reason="refused",
                                                      device_id="p1")])
    ops = OperationsService(pool, _PROFILES, clock=lambda: NOW + timedelta(hours=2))
    keys = ApiKeys(pool)
    consumers = ConsumerService(pool)
    files = load_profiles(SHIPPED_PROFILES)
    catalog = ProfileCatalog(pool, ProfileSet(files), SHIPPED_PROFILES, files)  # its own set: tests share _PROFILES
    services = Services(registry=registry, reads=Reads(pool), ingest_totals={}, replay=_no_replay,
                        extra={"operations": ops, "consumers": consumers, "profile_catalog": catalog,
                               **(extra or {})},
                        billing=billing)
    app = create_app(services, keys, ready=lambda: True,
                     extra_routes=[*console_routes(ops, keys), *me_routes(consumers)])
    tokens = {role: (await keys.create(role=role))[0] for role in ("admin", "operator", "billing", "analytics")}
    tokens["b-operator"] = (await keys.create(role="operator", tenant="elsewhere"))[0]
    tokens["b-billing"] = (await keys.create(role="billing", tenant="elsewhere"))[0]
    return app, tokens, ops


@pytest.fixture
async def world(pool: AsyncConnectionPool) -> AsyncIterator[World]:
    app, tokens, ops = await build(pool)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client:
        yield World(client, tokens, ops)


async def _no_replay(_: list[int]) -> list[Any]:
    return []


ALERTS = "query($open: Boolean!) { alerts(openOnly: $open) { edges { node { id kind severity accountId deviceId " \
         "ackedBy } } } }"
ACK = "mutation($ids: [ID!]!) { acknowledgeAlerts(ids: $ids) { id ackedAt ackedBy } }"
RA = """query($s: DateTime!, $u: DateTime!, $a: String) { revenueAssurance(since: $s, until: $u, accountId: $a) {
  accountId day product events quarantined billable unbound adjustments ratio } }"""


def nodes(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["node"] for e in body["data"]["alerts"]["edges"]]


async def test_tamper_alerts_are_raised_once_per_event_and_scoped_to_the_tenant(world: World) -> None:
    mine = nodes(await world.gql("operator", ALERTS, open=True))
    assert [(a["kind"], a["severity"], a["accountId"], a["deviceId"]) for a in mine] == [
        ("tamper", "critical", "a1", "p1")]
    theirs = nodes(await world.gql("b-operator", ALERTS, open=True))
    assert [(a["kind"], a["deviceId"]) for a in theirs] == [("tamper", "p2")]
    denied = await world.gql("analytics", ALERTS, open=False)
    assert denied["errors"][0]["extensions"]["code"] == "FORBIDDEN"


async def test_only_the_owning_tenant_acknowledges_and_the_refusal_reveals_nothing(world: World) -> None:
    alert_id = nodes(await world.gql("operator", ALERTS, open=True))[0]["id"]
    hostile = await world.gql("b-operator", ACK, ids=[alert_id])
    unknown = await world.gql("b-operator", ACK, ids=["999999"])
    assert hostile["errors"][0]["extensions"]["code"] == unknown["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    assert hostile["errors"][0]["message"].replace(alert_id, "N") == unknown["errors"][0]["message"].replace(
        "999999", "N")
    assert nodes(await world.gql("operator", ALERTS, open=True))[0]["ackedBy"] is None  # still open
    done = await world.gql("operator", ACK, ids=[alert_id])
    assert done["data"]["acknowledgeAlerts"][0]["ackedBy"] is not None
    assert nodes(await world.gql("operator", ALERTS, open=True)) == []
    assert len(nodes(await world.gql("operator", ALERTS, open=False))) == 1


async def test_silent_meters_raise_one_alert_per_silence(world: World, pool: AsyncConnectionPool) -> None:
    # Everything was received at NOW; the sweep runs 2 h later and acme-em340 declares silent_after_s 3600.
    assert await world.ops.sweep_silent() == 3  # m1, u1 (default) and m2 (elsewhere); panels declare no interval
    assert await world.ops.sweep_silent() == 0
    mine = nodes(await world.gql("operator", ALERTS, open=True))
    assert sorted(a["deviceId"] for a in mine if a["kind"] == "silent") == ["m1", "u1"]


async def test_prepaid_blocks_become_alerts_of_the_account_tenant(world: World, pool: AsyncConnectionPool) -> None:
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO prepaid_events (account_id, kind, balance, funds, currency) "
                           "VALUES ('b1', 'blocked', -1, 0, 'EUR')")
    theirs = nodes(await world.gql("b-operator", ALERTS, open=True))
    assert ("blocked", "critical", "b1") in [(a["kind"], a["severity"], a["accountId"]) for a in theirs]
    assert "blocked" not in [a["kind"] for a in nodes(await world.gql("operator", ALERTS, open=True))]


async def test_revenue_assurance_per_account_day_and_product(world: World) -> None:
    since, until = (DAY - timedelta(days=1)).isoformat(), (NOW + timedelta(days=1)).isoformat()
    body = await world.gql("billing", RA, s=since, u=until)
    rows = body["data"]["revenueAssurance"]
    energy = [r for r in rows if r["accountId"] == "a1" and r["product"] == "energy"]
    assert sum(Decimal(r["billable"]) for r in energy) == Decimal("2.0")
    assert {r["ratio"] for r in energy} == {"1.0000"}
    counts = [r for r in rows if r["accountId"] == "a1" and r["product"] == ""]
    assert sum(r["events"] for r in counts) == 5 + 2  # five readings, tamper and door opening (dup counted once)
    assert sum(r["quarantined"] for r in counts) == 1
    unbound = [r for r in rows if r["accountId"] is None]
    assert sum(Decimal(r["unbound"]) for r in unbound) == Decimal("1.0")  # u1: two deltas of 0.5 kWh
    assert {r["accountId"] for r in rows} == {"a1", None}  # nothing of tenant "elsewhere"
    hostile = await world.gql("operator", RA, s=since, u=until, a="b1")
    assert hostile["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    theirs = (await world.gql("b-operator", RA, s=since, u=until, a="b1"))["data"]["revenueAssurance"]
    assert sum(Decimal(r["billable"]) for r in theirs if r["product"] == "energy") == Decimal("2.0")
    too_long = await world.gql("billing", RA, s=since, u=(DAY + timedelta(days=200)).isoformat())
    assert too_long["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_alerts_export_needs_an_operator_key_and_holds_only_the_tenant(world: World) -> None:
    assert (await world.client.get("/console/export/alerts.csv")).status_code == 401
    forbidden = await world.client.get("/console/export/alerts.csv",
                                       headers={"Authorization": f"Bearer {world.keys['billing']}"})
    assert forbidden.status_code == 403
    csv = await world.client.get("/console/export/alerts.csv",
                                 headers={"Authorization": f"Bearer {world.keys['operator']}"})
    lines = csv.text.strip().split("\n")
    assert lines[0].startswith("id,kind,severity") and len(lines) == 2 and ",p1," in lines[1]
    page = await world.client.get("/console")
    assert page.status_code == 200 and "API key" in page.text and "X-Frame-Options" in page.headers


CREATE_TOKEN = "mutation($a: String!) { createConsumerToken(accountId: $a) { id token accountId } }"
REVOKE_TOKEN = "mutation($id: ID!) { revokeConsumerToken(id: $id) }"


async def test_consumer_token_shows_only_its_account_and_dies_on_revocation(world: World) -> None:
    assert (await world.gql("analytics", CREATE_TOKEN, a="a1"))["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    hostile = await world.gql("b-billing", CREATE_TOKEN, a="a1")
    assert hostile["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    made = (await world.gql("billing", CREATE_TOKEN, a="a1"))["data"]["createConsumerToken"]
    token = made["token"]

    async def summary(bearer: str) -> httpx.Response:
        return await world.client.get("/me/api/summary", headers={"Authorization": f"Bearer {bearer}"})

    mine = (await summary(token)).json()
    assert mine["account"]["account_id"] == "a1" and mine["prepaid"] is None
    energy = [d for d in mine["daily"] if d["product"] == "energy"]
    assert sum(Decimal(d["quantity"]) for d in energy) == Decimal("2.0") and energy[0]["unit"] == "kWh"
    assert (await summary(token[:-2] + "xx")).status_code == 401  # a forged secret
    assert (await summary(world.keys["admin"])).status_code == 401  # an API key is no consumer token
    other = await world.gql("b-billing", REVOKE_TOKEN, id=made["id"])
    assert other["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    assert (await summary(token)).status_code == 200
    assert (await world.gql("operator", REVOKE_TOKEN, id=made["id"]))["data"]["revokeConsumerToken"] is True
    assert (await summary(token)).status_code == 401  # refused from the next request on
    page = await world.client.get("/me")
    assert page.status_code == 200 and "uPlot.iife.min.js" in page.text
    asset = await world.client.get("/static/vendor/uplot/uPlot.iife.min.js")
    assert asset.status_code == 200 and len(asset.content) > 10_000
    assert (await world.client.get("/static/vendor/uplot/../../me.html")).status_code == 404


async def test_a_quarantine_burst_raises_one_alert_per_device_and_window(world: World,
                                                                        pool: AsyncConnectionPool) -> None:
    async with pool.connection() as conn:
        await insert_quarantine(conn, [QuarantineItem(message=panel("p2", 100 + i, "x"), reason="refused",
                                                      device_id="p2") for i in range(25)])
    assert await world.ops.sweep_bursts(window=timedelta(days=1), threshold=20) == 1
    assert await world.ops.sweep_bursts(window=timedelta(days=1), threshold=20) == 0
    theirs = nodes(await world.gql("b-operator", ALERTS, open=True))
    assert ("quarantine_burst", "p2") in [(a["kind"], a["deviceId"]) for a in theirs]
    assert "quarantine_burst" not in [a["kind"] for a in nodes(await world.gql("operator", ALERTS, open=True))]
