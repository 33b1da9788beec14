"""Two tenants (alpha, beta) with one of everything, behind the real schema and services."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import strawberry
from psycopg_pool import AsyncConnectionPool

from tests.storage.test_rating_settlement import READINGS
from tests.storage.test_rating_support import GRADUATED_DE, account_with_meter, feed_readings, wired
from usagehub.analytics.service import AnalyticsService
from usagehub.core.prepaid import AuthRequest, Grant
from usagehub.core.settlement import parse_vendors
from usagehub.graphql.context import Context, Services
from usagehub.graphql.schema import build_schema
from usagehub.prepaid.events import PrepaidEventHub
from usagehub.prepaid.service import FlatPricer, PrepaidService
from usagehub.runtime.config import SHIPPED_PROFILES, HubConfig
from usagehub.runtime.hub import Hub
from usagehub.runtime.profile_files import load_profiles
from usagehub.storage.keys import ApiKeys, Principal
from usagehub.storage.queries import Reads
from usagehub.storage.registry import Registry

try:  # the operations room (alerts, meter types, consumer tokens) of main, once merged
    from usagehub.runtime.operations import wire_operations
except ImportError:  # pragma: no cover — this tree has no operations room yet
    wire_operations = None

TENANTS = ("alpha", "beta")
GHOST = {"acc": "ghost-acc", "dev": "ghost-dev", "card": "ghost-card", "res": "0" * 32, "res2": "1" * 32,
         "q": "987654", "rec": "ghost-rec", "vendor": "ghost-vendor", "seg": "987655", "seg2": "987656",
         "plan": "ghost-plan", "alert": "987657", "ctoken": "ghost-ctoken", "gw": "ghost-gw"}


def _plan_yaml(plan_id: str) -> str:
    return GRADUATED_DE.replace("id: energy-de", f"id: {plan_id}")


def _vendor_yaml(vendor_id: str) -> str:
    return (f"vendors:\n  - id: {vendor_id}\n    kind: service_partner\n    currency: EUR\n"
            "    timezone: Europe/Berlin\n    rules:\n"
            "      - {id: share, type: revenue_percent, product: energy, percent: '10'}\n")


@dataclass
class World:
    """Services, one admin principal per tenant, and each tenant's ids."""

    services: Services
    schema: strawberry.Schema
    keys: ApiKeys
    pool: AsyncConnectionPool
    ids: dict[str, dict[str, str]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    principals: dict[str, Principal] = field(default_factory=dict)

    def idmap(self, who: str) -> dict[str, str]:
        """The ids of ``alpha``, ``beta`` or ``ghost``."""
        return GHOST if who == "ghost" else self.ids[who]

    async def run(self, caller: str, doc: str, variables: dict[str, Any]) -> dict[str, Any]:
        """A query or mutation as ``caller``'s admin, in its JSON form (errors: code and message)."""
        result = await self.schema.execute(doc, variable_values=variables,
                                           context_value=Context(self.services, self.principals[caller]))
        return {"data": json.loads(json.dumps(result.data, default=str)),
                "errors": [[(e.extensions or {}).get("code"), e.message] for e in result.errors or []]}


def fill(template: Any, ids: dict[str, str]) -> Any:
    """``template`` with every ``{name}`` replaced by that id."""
    if isinstance(template, str):
        return template.format(**ids)
    if isinstance(template, dict):
        return {k: fill(v, ids) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, ids) for v in template]
    return template


def as_ghost(text: str, ids: dict[str, str]) -> str:
    """``text`` with each of ``ids`` written as its ghost id."""
    for name, value in sorted(((k, v) for k, v in ids.items() if v), key=lambda kv: -len(kv[1])):
        text = re.sub(rf"(?<![\w-]){re.escape(value)}(?![\w-])", GHOST[name], text)
    return text


async def _tenant(w: World, t: str, pipeline: Any, prepaid: PrepaidService, analytics: AnalyticsService) -> None:
    acc, dev, card = f"{t}-acc", f"{t}-dev", f"{t}-card"
    await account_with_meter(w.pool, acc, dev, tenant=t)
    await Registry(w.pool).upsert_account(account_id=acc, tenant=t, name=f"{t} household", prepaid=True,
                                          timezone="Europe/Berlin")
    await feed_readings(pipeline, dev, READINGS)
    await Registry(w.pool).upsert_device(device_id=f"{t}-gw", profile_id="acme-dc100-gateway", tenant=t)
    await prepaid.register_card(card_id=card, account_id=acc)
    await prepaid.top_up(account_id=acc, amount=Decimal(50), payment_ref=f"{t}-pay-1", card_id=card)
    grants = [await prepaid.authorize(AuthRequest(device_id=dev, account_id=acc, units=Decimal(1),
                                                  product="energy")) for _ in range(2)]
    assert all(isinstance(g, Grant) for g in grants), grants
    await w.services.rating.load_plans(_plan_yaml(f"{t}-plan"), "plans.yaml", tenant=t)
    await w.services.rating.register_vendors(parse_vendors(_vendor_yaml(f"{t}-vendor"), "v").vendors, tenant=t)
    segs = [await analytics.save_segment(tenant=t, name=f"{t} segment {i}", product="energy",
                                         rule="avg_daily > 0") for i in range(2)]
    async with w.pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO quarantine (received_at, transport, topic, payload, reason, device_id) "
            "VALUES (now(), 'mqtt', %s, %s, %s, %s) RETURNING quarantine_id",
            (f"meters/{dev}/reading", f"{t} raw bytes".encode(), f"{t}-bad", dev))
        row = await cur.fetchone()
        assert row is not None
        await conn.execute("INSERT INTO prepaid_card_attempts (card_id, account_id, operation, reason) "
                           "VALUES (%s, %s, 'topup', 'CARD_BLACKLISTED')", (card, acc))
        await conn.execute("INSERT INTO prepaid_events (account_id, kind, balance, funds, currency) "
                           "VALUES (%s, 'low_balance', 1, 1, 'EUR')", (acc,))
        cur = await conn.execute("SELECT record_id FROM billing_records WHERE account_id = %s LIMIT 1", (acc,))
        record = await cur.fetchone()
        assert record is not None, "the readings made no billing record"
        alert, ctoken = "", ""
        if "operations" in w.services.extra:
            cur = await conn.execute(
                "INSERT INTO alerts (tenant, kind, severity, account_id, device_id, message, dedupe_key) "
                "VALUES (%s, 'tamper', 'critical', %s, %s, %s, %s) RETURNING alert_id",
                (t, acc, dev, f"{t} cover opened", f"{t}-tamper"))
            alert = str((await cur.fetchone() or [0])[0])
            _, ctoken = await w.services.extra["consumers"].create(tenant=t, account_id=acc, created_by="test")
    assert isinstance(grants[0], Grant) and isinstance(grants[1], Grant)
    w.ids[t] = {"acc": acc, "dev": dev, "card": card, "res": grants[0].reservation_id,
                "res2": grants[1].reservation_id, "q": str(row[0]), "rec": str(record[0]), "vendor": f"{t}-vendor",
                "seg": str(segs[0].segment_id), "seg2": str(segs[1].segment_id), "plan": f"{t}-plan",
                "alert": alert, "ctoken": ctoken, "gw": f"{t}-gw"}
    token, principal = await w.keys.create(role="admin", tenant=t)
    w.tokens[t], w.principals[t] = token, principal


async def world(pool: AsyncConnectionPool) -> AsyncIterator[World]:
    """The two-tenant world, with the pipeline running (for replays)."""
    pipeline, billing, rating = wired(pool)
    await rating.start()
    prepaid = PrepaidService(pool, FlatPricer({"energy": Decimal("0.25")}))
    analytics = AnalyticsService(pool)
    registry = Registry(pool)
    keys = ApiKeys(pool)
    hub = Hub(config=HubConfig(), pool=pool, pipeline=pipeline, keys=keys, registry=registry, billing=billing)
    services = Services(registry=registry, reads=Reads(pool), ingest_totals=pipeline.totals, replay=hub.replay,
                        extra={"prepaid_events": PrepaidEventHub(str(pool.conninfo))}, billing=billing,
                        rating=rating, prepaid=prepaid, analytics=analytics)
    w = World(services=services, schema=build_schema(), keys=keys, pool=pool)
    tasks: list[asyncio.Task[None]] = []
    if wire_operations is not None:
        _, tasks = await wire_operations(pool, pipeline.profiles, services, keys, SHIPPED_PROFILES,
                                         load_profiles(SHIPPED_PROFILES))
    for t in TENANTS:
        await _tenant(w, t, pipeline, prepaid, analytics)
    await analytics.refresh_features(date(2026, 11, 1))
    for t in TENANTS:
        await analytics.evaluate(t, int(w.ids[t]["seg"]), datetime(2026, 11, 1, tzinfo=UTC))
    task = asyncio.create_task(pipeline.run())
    try:
        yield w
    finally:
        for t in (task, *tasks):
            t.cancel()
        await asyncio.gather(task, *tasks, return_exceptions=True)
        await pipeline.drain()
        await prepaid.close()
