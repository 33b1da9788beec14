"""One GraphQL request cannot hold the hub: body, tokens, depth (introspection too), aliases, fields, cost."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from usagehub.graphql.context import Services
from usagehub.graphql.cost import Limits
from usagehub.storage.keys import ApiKeys
from usagehub.storage.queries import Reads
from usagehub.storage.registry import Registry
from usagehub.web.app import BodyLimit, create_app

ACCOUNTS = "a{i}: accounts(first: {n}) {{ edges {{ node {{ id name }} }} }}"


class Client:
    """The in-process app with an analytics-granted admin key."""

    def __init__(self, http: httpx.AsyncClient, token: str) -> None:
        self.http, self.token = http, token

    async def post(self, query: str, **variables: Any) -> httpx.Response:
        return await self.http.post("/graphql", json={"query": query, "variables": variables},
                                    headers={"Authorization": f"Bearer {self.token}"})

    async def codes(self, query: str, **variables: Any) -> list[str | None]:
        body = (await self.post(query, **variables)).json()
        return [e.get("extensions", {}).get("code") for e in body.get("errors") or []]


@pytest.fixture
async def client(pool: AsyncConnectionPool) -> AsyncIterator[Client]:
    async def replay(_: list[int]) -> list[Any]:
        return []

    keys = ApiKeys(pool)
    services = Services(registry=Registry(pool), reads=Reads(pool), ingest_totals={}, replay=replay, extra={})
    app = create_app(services, keys, ready=lambda: True, limits=Limits())
    token, _ = await keys.create(role="admin")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as http:
        yield Client(http, token)


async def test_ordinary_queries_pass(client: Client) -> None:
    assert await client.codes("{ accounts(first: 500) { edges { node { id name } } pageInfo { hasNextPage } } }") == []
    assert await client.codes("query($n: Int!) { accounts(first: $n) { edges { node { id } } } }", n=100) == []
    assert await client.codes("{ __schema { queryType { name } types { name } } }") == []


async def test_big_bodies_are_refused_before_parsing(client: Client) -> None:
    big = "{ " + "__typename " * 500_000 + "}"  # ~5.5 MB
    started = time.monotonic()
    response = await client.post(big)
    assert response.status_code == 413 and response.json()["errors"][0]["extensions"]["code"] == "BODY_TOO_LARGE"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(100):
            yield b" " * 10_000

    chunked = await client.http.post("/graphql", content=chunks(), headers={
        "Authorization": f"Bearer {client.token}", "Content-Type": "application/json"})
    assert chunked.status_code == 413
    assert time.monotonic() - started < 5


async def test_token_alias_field_depth_and_cost_limits(client: Client) -> None:
    many = "{ " + "x " * 6_000 + "}"  # under the body limit, over the token limit (2,000)
    body = (await client.post(many)).json()
    assert "more than 2000 tokens" in body["errors"][0]["message"] and body.get("data") is None
    aliases = "{ " + " ".join(f"t{i}: __typename" for i in range(60)) + " }"
    assert await client.codes(aliases) == ["QUERY_TOO_LARGE"]
    costly = "{ " + " ".join(ACCOUNTS.format(i=i, n=500) for i in range(30)) + " }"
    assert await client.codes(costly) == ["QUERY_TOO_COSTLY"]
    cheap = "{ " + " ".join(ACCOUNTS.format(i=i, n=5) for i in range(30)) + " }"
    assert await client.codes(cheap) == []
    variable = "query($n: Int!) { " + " ".join(ACCOUNTS.format(i=i, n="$n") for i in range(30)) + " }"
    assert await client.codes(variable.replace("(first: $n)", "(first: $n)"), n=1) == ["QUERY_TOO_COSTLY"]
    deep_introspection = "{ __schema { types { fields { type" + " { ofType" * 10 + " { name }" + " }" * 10 + \
        " } } } }"
    assert await client.codes(deep_introspection) == ["QUERY_TOO_DEEP"]
    series = '{ consumptionSeries(scope: FLEET, since: "2016-01-01", until: "2026-01-01", bucket: QUARTER) ' \
        "{ start quantity } }"
    assert await client.codes(series) == ["QUERY_TOO_COSTLY"]
    month = '{ consumptionSeries(scope: FLEET, since: "2026-01-01", until: "2026-02-01", bucket: DAY) { start } }'
    assert "QUERY_TOO_COSTLY" not in await client.codes(month)


async def test_fragment_bombs_stop_at_the_field_limit_quickly(client: Client) -> None:
    levels = 30  # 2**30 fields if expanded
    frags = ["fragment F0 on Query { __typename }"] + [
        f"fragment F{i} on Query {{ ...F{i - 1} ...F{i - 1} }}" for i in range(1, levels)]
    doc = f"{{ ...F{levels - 1} }} " + " ".join(frags)
    started = time.monotonic()
    assert await client.codes(doc) == ["QUERY_TOO_LARGE"]
    assert time.monotonic() - started < 2


async def test_long_get_queries_are_refused() -> None:
    async def inner(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("a refused request reached the GraphQL app")

    limited = BodyLimit(inner, 1024)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=limited), base_url="http://hub") as http:
        response = await http.get("/graphql", params={"query": "{ " + "__typename " * 200 + "}"})
    assert response.status_code == 413
