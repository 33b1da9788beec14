"""POST /ingest through the real pipeline and PostgreSQL: a token writes only what its holder is entitled to."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette

from usagehub.adapters.http import HttpConfig, ingest_routes
from usagehub.core.decode import ProfileSet
from usagehub.pipeline import identity
from usagehub.pipeline.pipeline import Pipeline, PipelineSettings
from usagehub.runtime.config import SHIPPED_PROFILES
from usagehub.runtime.profile_files import load_profiles
from usagehub.storage.registry import DeviceDirectorySql, KnownDevices, Registry

TS = (datetime.now(UTC) - timedelta(hours=1)).isoformat()


@pytest.fixture
async def post(pool: AsyncConnectionPool) -> AsyncIterator[Any]:
    reg = Registry(pool)
    for t in ("a", "b"):
        await reg.upsert_device(device_id=f"hgw-{t}", tenant=t.upper(), profile_id="acme-http-gateway",
                                secrets={"http_token": f"gateway-token-{t}"})
        await reg.upsert_device(device_id=f"{t}1", tenant=t.upper())
        await reg.attach_to_gateway(gateway_id=f"hgw-{t}", device_ids=[f"{t}1"], tenant=t.upper())
    await reg.upsert_device(device_id="plug-bare", tenant="A", secrets={"http_token": "bare-token"})
    profiles = load_profiles(SHIPPED_PROFILES)
    pipeline = Pipeline(pool, ProfileSet(profiles), KnownDevices(pool), PipelineSettings(batch_max_wait_ms=5))
    app = Starlette(routes=ingest_routes(pipeline, DeviceDirectorySql(pool), HttpConfig(), profiles))
    task = asyncio.create_task(pipeline.run())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client:
        async def call(token: str, body: object) -> dict[str, Any]:
            response = await client.post("/ingest", json=body, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 202, response.text
            result: dict[str, Any] = response.json()
            return result

        yield call
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def batch(meter: str, kwh: int) -> dict[str, object]:
    return {"readings": [{"meter": meter, "seq": 1, "ts": TS, "kwh": kwh}]}


async def test_a_gateway_token_cannot_bill_another_tenants_device(post: Any, pool: AsyncConnectionPool) -> None:
    hostile = await post("gateway-token-a", [batch("b1", 50_000)])
    own = await post("gateway-token-a", [batch("a1", 7)])
    other = await post("gateway-token-b", [batch("b1", 3)])
    assert [e["reason"] for e in hostile["errors"]] == [identity.NOT_ENTITLED]
    assert (own["accepted"], other["accepted"]) == (1, 1)
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT device_id, value FROM events ORDER BY 1")
        assert [(r[0], int(r[1])) for r in await cur.fetchall()] == [("a1", 7), ("b1", 3)]


async def test_a_token_of_a_device_without_profile_gets_no_profile(post: Any) -> None:
    result = await post("bare-token", [batch("a1", 1)])   # once: it silently became the gateway profile
    assert (result["accepted"], [e["reason"] for e in result["errors"]]) == (0, [identity.NO_PROFILE])
