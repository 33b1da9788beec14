"""Meter types edited through the API: validated like files, versioned, put in force by every running hub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.storage.test_pipeline import feed
from tests.storage.test_rating_support import NOW
from usagehub.adapters.base import Outcome
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage
from usagehub.graphql.context import Services
from usagehub.operations.profiles import ProfileCatalog
from usagehub.pipeline.pipeline import Pipeline, PipelineSettings
from usagehub.pipeline.sessions import SessionEngine
from usagehub.pipeline.usage import UsageWriter
from usagehub.runtime.config import SHIPPED_PROFILES
from usagehub.runtime.profile_files import load_profiles
from usagehub.storage.keys import ApiKeys
from usagehub.storage.queries import Reads
from usagehub.storage.registry import KnownDevices, Registry
from usagehub.web.app import create_app

WATER = """\
id: acme-water
description: ACME water meter, JSON over MQTT
match: {transport: mqtt, topic: "water/{device_id}/reading"}
decode: {type: json}
service: water
event_id: "$.seq"
timestamp: "$.ts"
meters:
  volume:
    value: "$.litres"
    kind: cumulative
    unit: m3
    scale: 0.001
    aggregation: sum
"""
SAVE = """mutation($y: String!) { saveMeterType(yaml: $y) { meterType { id version source meters }
  errors { field line message } } }"""
LIST = "{ meterTypes { id version source transport yaml } }"


class Hub:
    """One hub's profile set, pipeline and API."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        files = load_profiles(SHIPPED_PROFILES)
        self.profiles = ProfileSet(files)
        self.pipeline = Pipeline(pool, self.profiles, KnownDevices(pool), PipelineSettings(batch_max_wait_ms=5))
        usage = UsageWriter(self.profiles)
        engine = SessionEngine(self.profiles, entries=lambda: usage.last_entries, clock=lambda: NOW)
        self.pipeline.hooks += [usage.apply, engine.apply]
        self.catalog = ProfileCatalog(pool, self.profiles, SHIPPED_PROFILES, files)


@pytest.fixture
async def hubs(pool: AsyncConnectionPool) -> AsyncIterator[tuple[Hub, Hub, Any, dict[str, str]]]:
    one, two = Hub(pool), Hub(pool)
    await one.catalog.load()
    listener = asyncio.create_task(two.catalog.listen())  # the second hub hears of saves by the first

    async def replay(_: list[int]) -> list[Any]:
        return []

    keys = ApiKeys(pool)
    services = Services(registry=Registry(pool), reads=Reads(pool), ingest_totals={}, replay=replay,
                        extra={"profile_catalog": one.catalog})
    app = create_app(services, keys, ready=lambda: True)
    tokens = {role: (await keys.create(role=role))[0] for role in ("admin", "operator", "billing")}
    tokens["b-operator"] = (await keys.create(role="operator", tenant="elsewhere"))[0]
    tokens["b-admin"] = (await keys.create(role="admin", tenant="elsewhere"))[0]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client:
        async def gql(who: str, query: str, **variables: Any) -> dict[str, Any]:
            r = await client.post("/graphql", json={"query": query, "variables": variables},
                                  headers={"Authorization": f"Bearer {tokens[who]}"})
            body: dict[str, Any] = r.json()
            return body

        yield one, two, gql, tokens
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)


def reading(device: str, seq: int, litres: int) -> RawMessage:
    body = {"seq": seq, "ts": NOW.isoformat(), "litres": litres}
    return RawMessage(transport="mqtt", topic=f"water/{device}/reading", payload=orjson.dumps(body), received_at=NOW)


async def test_a_saved_meter_type_decodes_at_once_here_and_in_another_hub(hubs: Any, pool: AsyncConnectionPool
                                                                          ) -> None:
    one, two, gql, _ = hubs
    await Registry(pool).upsert_device(device_id="w1", profile_id="acme-water")
    before = await feed(one.pipeline, [reading("w1", 1, 1000)])
    assert before == [Outcome.QUARANTINED]  # no profile claims water/... yet
    assert (await gql("operator", SAVE, y=WATER))["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    # another tenant's admin may not change what every tenant's devices decode with
    assert (await gql("b-admin", SAVE, y=WATER))["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    saved = (await gql("admin", SAVE, y=WATER))["data"]["saveMeterType"]
    assert saved["errors"] == [] and saved["meterType"] == {"id": "acme-water", "version": 1, "source": "database",
                                                            "meters": ["volume"]}
    assert await feed(one.pipeline, [reading("w1", 2, 1500)]) == [Outcome.ACCEPTED]  # no restart
    for _ in range(100):  # the other hub hears the commit
        if "acme-water" in two.profiles.by_id:
            break
        await asyncio.sleep(0.05)
    assert await feed(two.pipeline, [reading("w1", 3, 1800)]) == [Outcome.ACCEPTED]
    listed = {t["id"]: t for t in (await gql("b-operator", LIST))["data"]["meterTypes"]}
    assert listed["acme-water"]["version"] == 1 and listed["acme-em340"]["source"] == "file"
    assert "energy_wh" in listed["acme-em340"]["yaml"]  # the file's own text, to start an edit from
    again = (await gql("admin", SAVE, y=WATER.replace("ACME water meter", "ACME water meter v2")))
    assert again["data"]["saveMeterType"]["meterType"]["version"] == 2


async def test_invalid_or_incompatible_meter_types_are_refused_at_the_field(hubs: Any) -> None:
    one, _, gql, _ = hubs
    bad = (await gql("admin", SAVE, y=WATER.replace("kind: cumulative", "kind: sideways")))["data"]["saveMeterType"]
    assert bad["meterType"] is None
    assert bad["errors"][0]["field"] == "meters.volume.kind" and bad["errors"][0]["line"] == 11
    broken = (await gql("admin", SAVE, y="id: [unclosed"))["data"]["saveMeterType"]
    assert broken["errors"][0]["line"] == 1 and "YAML" in broken["errors"][0]["message"]
    text = next(e.yaml for e in one.catalog.entries() if e.profile.id == "acme-em340")
    assert "\n  energy:" in text
    refused = (await gql("admin", SAVE, y=text.replace("\n  energy:", "\n  renamed:")))["data"]["saveMeterType"]
    assert refused["meterType"] is None
    assert any(e["field"] == "meters.energy" for e in refused["errors"]), refused
    assert "acme-em340" not in one.catalog.stored  # nothing was stored


VERSIONS = 'query($id: String!) { meterTypeVersions(id: $id) { version author createdAt yaml } }'


async def test_every_saved_version_is_kept_and_listed_newest_first(hubs: Any) -> None:
    _, _, gql, _ = hubs
    assert (await gql("operator", VERSIONS, id="acme-water"))["data"]["meterTypeVersions"] == []
    for text in (WATER, WATER.replace("ACME water meter", "ACME water meter v2")):
        assert (await gql("admin", SAVE, y=text))["data"]["saveMeterType"]["errors"] == []
    refused = await gql("admin", SAVE, y=WATER.replace("kind: cumulative", "kind: gauge"))
    assert refused["data"]["saveMeterType"]["errors"]  # an incompatible text adds no version
    mine = (await gql("operator", VERSIONS, id="acme-water"))["data"]["meterTypeVersions"]
    assert [v["version"] for v in mine] == [2, 1]
    assert "water meter v2" in mine[0]["yaml"] and "water meter v2" not in mine[1]["yaml"]
    assert all(v["author"] for v in mine)  # the admin key that saved it, for the hub's own tenant
    theirs = (await gql("b-operator", VERSIONS, id="acme-water"))["data"]["meterTypeVersions"]
    assert [v["version"] for v in theirs] == [2, 1] and {v["author"] for v in theirs} == {None}
    assert (await gql("billing", VERSIONS, id="acme-water"))["errors"][0]["extensions"]["code"] == "FORBIDDEN"
