"""The console's panels through the API they call, two tenants and a hostile caller: meter quick search by
account, device or serial; a device's recent events, newest first; the quarantine browser's filters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.storage.test_operations import DAY, World, build, panel
from tests.storage.test_rating_support import NOW, wired
from tests.storage.test_sessions_billing import feed
from usagehub.storage.events import QuarantineItem, insert_quarantine
from usagehub.storage.keys import ApiKeys

SEARCH = "query($q: String!) { meterInspection(search: $q) { deviceId meter accountId } }"
RECENT = "query($d: String!) { events(deviceId: $d, first: 3, newestFirst: true) { edges { node { ts meter " \
         "eventId } } } }"
OLDEST = "query($d: String!) { events(deviceId: $d, first: 3) { edges { node { ts meter eventId } } } }"
QUARANTINE = """query($d: String, $s: DateTime, $u: DateTime) { quarantine(deviceId: $d, since: $s, until: $u,
  includeReplayed: true) { edges { node { id deviceId receivedAt } } } }"""


@pytest.fixture
async def w(pool: AsyncConnectionPool) -> AsyncIterator[World]:
    """The two-tenant world of the operations tests, over the in-process app."""
    app, tokens, ops = await build(pool)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client:
        yield World(client, tokens, ops)


def devices(body: dict[str, Any]) -> set[str]:
    return {m["deviceId"] for m in body["data"]["meterInspection"]}


async def test_quick_search_finds_the_meters_of_an_account_by_its_id_only_in_the_own_tenant(w: World) -> None:
    assert devices(await w.gql("operator", SEARCH, q="a1")) == {"m1", "p1"}  # the devices account a1 holds
    assert devices(await w.gql("operator", SEARCH, q="m1")) == {"m1"}  # by device id (serial) as before
    assert devices(await w.gql("b-operator", SEARCH, q="b1")) == {"m2", "p2"}
    hostile = await w.gql("b-operator", SEARCH, q="a1")  # another tenant's account: nothing, no error
    assert hostile == {"data": {"meterInspection": []}}
    assert devices(await w.gql("operator", SEARCH, q="b1")) == set()


async def test_recent_events_come_newest_first_and_only_for_the_tenants_devices(w: World) -> None:
    newest = [e["node"] for e in (await w.gql("operator", RECENT, d="m1"))["data"]["events"]["edges"]]
    oldest = [e["node"] for e in (await w.gql("operator", OLDEST, d="m1"))["data"]["events"]["edges"]]
    assert [n["ts"] for n in newest] == sorted((n["ts"] for n in newest), reverse=True)
    assert newest[0]["ts"] > oldest[-1]["ts"]  # five readings: the newest three are not the oldest three
    assert newest[0]["ts"].startswith((DAY + timedelta(hours=4)).strftime("%Y-%m-%dT%H"))
    hostile = await w.gql("b-operator", RECENT, d="m1")
    assert hostile["data"]["events"]["edges"] == []


async def test_quarantine_browser_filters_by_device_and_time_within_the_tenant(w: World,
                                                                              pool: AsyncConnectionPool) -> None:
    async with pool.connection() as conn:  # another device of this tenant, a day earlier
        old = panel("m1", 7, "x")
        old = type(old)(transport=old.transport, topic=old.topic, payload=old.payload,
                        received_at=NOW - timedelta(days=1))
        await insert_quarantine(conn, [QuarantineItem(message=old, reason="refused", device_id="m1")])

    async def ids(who: str, **variables: Any) -> list[str]:
        body = await w.gql(who, QUARANTINE, **{"d": None, "s": None, "u": None, **variables})
        assert "errors" not in body, body
        return [n["node"]["deviceId"] for n in body["data"]["quarantine"]["edges"]]

    assert sorted(await ids("operator")) == ["m1", "p1"]
    assert await ids("operator", d="p1") == ["p1"]
    assert await ids("operator", s=(NOW - timedelta(hours=1)).isoformat()) == ["p1"]
    assert await ids("operator", u=(NOW - timedelta(hours=1)).isoformat()) == ["m1"]
    assert await ids("operator", d="p1", u=(NOW - timedelta(hours=1)).isoformat()) == []
    assert await ids("b-operator", d="p1") == []  # another tenant's device: nothing
    naive = await w.gql("operator", QUARANTINE, d=None, s="2026-11-21T00:00:00", u=None)
    assert naive["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_inspection_shows_the_current_state_of_a_state_meter(w: World, pool: AsyncConnectionPool) -> None:
    pipeline, _, _ = wired(pool)
    armed = panel("p1", 50, "state")
    body = {"id": 50, "t": int((DAY + timedelta(hours=3)).timestamp() * 1000), "state": "armed_away"}
    await feed(pipeline, [type(armed)(transport="mqtt", topic=armed.topic, payload=orjson.dumps(body),
                                      received_at=NOW)])
    query = "query($d: String) { meterInspection(deviceId: $d) { meter lastValue lastState } }"
    meters = {m["meter"]: m for m in (await w.gql("operator", query, d="p1"))["data"]["meterInspection"]}
    assert meters["armed"]["lastState"] == "armed_away" and meters["armed"]["lastValue"] == "1"
    assert meters["tamper"]["lastState"] is None  # an event meter has no state
    assert (await w.gql("b-operator", query, d="p1"))["data"]["meterInspection"] == []


async def test_quarantine_filters_and_the_burst_sweep_read_by_index(pool: AsyncConnectionPool) -> None:
    # On a large quarantine a scan costs 10-20x (bench/console_queries.py); tiny test tables would be scanned
    # anyway, so scans are priced out to see which index the planner has.
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")

        async def plan(sql: str) -> str:
            cur = await conn.execute("EXPLAIN " + sql)
            return "\n".join(str(r[0]) for r in await cur.fetchall())

        assert "quarantine_device" in await plan("SELECT * FROM quarantine WHERE device_id = 'rare' "
                                                 "ORDER BY quarantine_id LIMIT 101")
        assert "quarantine_received" in await plan("SELECT device_id, count(*) FROM quarantine "
                                                   "WHERE received_at >= now() - interval '10 minutes' "
                                                   "GROUP BY device_id")


async def test_alerts_export_of_another_tenant_and_of_a_revoked_key(w: World, pool: AsyncConnectionPool) -> None:
    async def export(bearer: str) -> httpx.Response:
        return await w.client.get("/console/export/alerts.csv", headers={"Authorization": f"Bearer {bearer}"})

    theirs = await export(w.keys["b-operator"])
    assert theirs.status_code == 200 and ",p2," in theirs.text and ",p1," not in theirs.text
    keys = ApiKeys(pool)  # revoked before the app ever saw it (revocation across hubs: tests/api/test_keys.py)
    token, principal = await keys.create(role="operator")
    await keys.revoke(principal.key_id)
    refused = await export(token)
    assert refused.status_code == 401 and "p1" not in refused.text
