"""The gateway relation through the in-process API: two tenants, roles, and a hostile operator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from usagehub.graphql.context import Services
from usagehub.storage.keys import ApiKeys
from usagehub.storage.queries import Reads
from usagehub.storage.registry import Registry
from usagehub.web.app import create_app

ATTACH = "mutation($g: String!, $d: [String!]!) { registerGatewayDevices(gatewayId: $g, deviceIds: $d) }"
DETACH = "mutation($g: String!, $d: [String!]!) { removeGatewayDevices(gatewayId: $g, deviceIds: $d) }"
LIST = "query($g: String!) { gatewayDevices(gatewayId: $g) }"


@pytest.fixture
async def gql(pool: AsyncConnectionPool) -> AsyncIterator[Any]:
    registry = Registry(pool)
    for tenant in ("A", "B"):
        await registry.upsert_device(device_id=f"gw-{tenant}", tenant=tenant, profile_id="acme-dc100-gateway")
        await registry.upsert_device(device_id=f"m-{tenant}", tenant=tenant)

    async def replay(_: list[int]) -> list[Any]:
        return []

    keys = ApiKeys(pool)
    services = Services(registry=registry, reads=Reads(pool), ingest_totals={}, replay=replay, extra={})
    app = create_app(services, keys, ready=lambda: True)
    tokens = {"A": (await keys.create(role="operator", tenant="A"))[0],
              "B": (await keys.create(role="operator", tenant="B"))[0],
              "A-billing": (await keys.create(role="billing", tenant="A"))[0]}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client:
        async def call(who: str, query: str, **variables: Any) -> dict[str, Any]:
            response = await client.post("/graphql", json={"query": query, "variables": variables},
                                         headers={"Authorization": f"Bearer {tokens[who]}"})
            body: dict[str, Any] = response.json()
            return body

        yield call


def code(body: dict[str, Any]) -> str:
    return str(body["errors"][0]["extensions"]["code"])


async def test_an_operator_manages_its_own_tenants_gateways(gql: Any) -> None:
    assert (await gql("A", ATTACH, g="gw-A", d=["m-A"]))["data"] == {"registerGatewayDevices": ["m-A"]}
    assert (await gql("A", LIST, g="gw-A"))["data"] == {"gatewayDevices": ["m-A"]}
    assert (await gql("A-billing", LIST, g="gw-A"))["data"] == {"gatewayDevices": ["m-A"]}
    assert (await gql("A", DETACH, g="gw-A", d=["m-A"]))["data"] == {"removeGatewayDevices": ["m-A"]}
    assert (await gql("A", LIST, g="gw-A"))["data"] == {"gatewayDevices": []}


async def test_a_hostile_tenant_can_neither_see_nor_change_nor_learn_ids(gql: Any) -> None:
    await gql("A", ATTACH, g="gw-A", d=["m-A"])
    hostile_attach = await gql("B", ATTACH, g="gw-B", d=["m-A"])    # B's gateway, A's meter
    unknown_attach = await gql("B", ATTACH, g="gw-B", d=["nobody"])
    assert code(hostile_attach) == code(unknown_attach) == "UNKNOWN_DEVICE"
    # The same message whether the id exists in another tenant or nowhere (no existence oracle).
    assert (hostile_attach["errors"][0]["message"].replace("m-A", "X")
            == unknown_attach["errors"][0]["message"].replace("nobody", "X"))
    assert code(await gql("B", ATTACH, g="gw-A", d=["m-B"])) == "UNKNOWN_DEVICE"  # A's gateway
    assert (await gql("B", LIST, g="gw-A"))["data"] == {"gatewayDevices": []}
    assert (await gql("B", DETACH, g="gw-A", d=["m-A"]))["data"] == {"removeGatewayDevices": []}
    assert (await gql("A", LIST, g="gw-A"))["data"] == {"gatewayDevices": ["m-A"]}
    assert code(await gql("A-billing", ATTACH, g="gw-A", d=["m-A"])) == "FORBIDDEN"
