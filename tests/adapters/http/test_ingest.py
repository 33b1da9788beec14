"""POST /ingest in-process (httpx ASGI transport) against a MiniPipeline: auth, idempotency, limits."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from tests.adapters.files.minipipe import MiniPipeline, load_profiles
from tests.fakes import RecordingSink, StaticDirectory
from usagehub.adapters.base import DeviceEndpoint, Sink
from usagehub.adapters.http import HttpConfig, ingest_routes
from usagehub.adapters.http.body import split_body

TOKEN, GATEWAY_TOKEN = "meter-secret-1", "gw-secret-9"
DEVICES = StaticDirectory([
    DeviceEndpoint(device_id="plug1", profile_id="acme-http-meter", secrets={"http_token": TOKEN}),
    DeviceEndpoint(device_id="gw1", profile_id="acme-http-gateway", secrets={
        "http_token_sha256": hashlib.sha256(GATEWAY_TOKEN.encode()).hexdigest()}),
    DeviceEndpoint(device_id="plain", profile_id=None, secrets={"oscore_master_secret": "00"}),
])
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def profiles() -> list:  # type: ignore[type-arg]
    return load_profiles("acme-http-meter", "acme-http-gateway")


def client_for(sink: Sink, **config: object) -> httpx.AsyncClient:
    app = Starlette(routes=ingest_routes(sink, DEVICES, HttpConfig.model_validate(config), profiles()))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub")


@pytest.fixture
async def hub() -> AsyncIterator[tuple[httpx.AsyncClient, MiniPipeline]]:
    pipeline = MiniPipeline(profiles())
    async with client_for(pipeline, max_body_bytes=2048, max_lines=50) as client:
        yield client, pipeline


def readings(*seqs: int) -> list[dict[str, object]]:
    return [{"seq": s, "ts": f"2026-03-01T00:{s:02d}:00+00:00", "wh": 100 + s} for s in seqs]


async def test_json_array_is_accepted_after_commit(hub: tuple[httpx.AsyncClient, MiniPipeline]) -> None:
    client, pipeline = hub
    response = await client.post("/ingest", json=readings(1, 2, 3), headers=AUTH)
    assert response.status_code == 202
    assert response.json() == {"lines": 3, "accepted": 3, "duplicates": 0, "quarantined": 0, "errors": []}
    first = pipeline.messages[0]
    assert (first.transport, first.topic) == ("http", "ingest/plug1")
    assert dict(first.meta) == {"device_id": "plug1", "profile": "acme-http-meter", "line": "1"}
    assert {e.device_id for e in pipeline.events.values()} == {"plug1"}


async def test_same_events_posted_again_are_counted_once(hub: tuple[httpx.AsyncClient, MiniPipeline]) -> None:
    client, pipeline = hub
    body = "\n".join(orjson.dumps(r).decode() for r in readings(1, 2)) + "\n"
    headers = {**AUTH, "Content-Type": "application/x-ndjson"}
    first = await client.post("/ingest", content=body, headers=headers)
    again = await client.post("/ingest", content=body, headers=headers)
    assert first.json()["accepted"] == 2
    assert again.status_code == 202 and again.json()["accepted"] == 0 and again.json()["duplicates"] == 2
    assert len(pipeline.events) == 2


async def test_bad_lines_are_reported_and_quarantined(hub: tuple[httpx.AsyncClient, MiniPipeline]) -> None:
    client, pipeline = hub
    body = b'{"seq":1,"ts":"2026-03-01T00:00:00+00:00","wh":5}\n{oops\n{"seq":2,"wh":6}\n'
    response = await client.post("/ingest", content=body,
                                 headers={**AUTH, "Content-Type": "application/x-ndjson"})
    assert response.status_code == 202
    result = response.json()
    assert (result["accepted"], result["quarantined"]) == (1, 2)
    assert [e["line"] for e in result["errors"]] == [2, 3]
    assert result["errors"][0]["reason"].startswith("not JSON")
    assert "missing field" in result["errors"][1]["reason"]
    assert [m.payload for m, _ in pipeline.quarantine] == [b"{oops", b'{"seq":2,"wh":6}']


Hub = tuple[httpx.AsyncClient, MiniPipeline]


async def test_gateway_token_posts_batches_for_its_meters(hub: Hub) -> None:
    client, pipeline = hub
    batch = {"readings": [{"meter": "m1", "seq": 1, "ts": "2026-03-01T00:00:00Z", "kwh": 10},
                          {"meter": "m2", "seq": 1, "ts": "2026-03-01T00:00:00Z", "kwh": 20}]}
    response = await client.post("/ingest", json=batch, headers={"Authorization": f"Bearer {GATEWAY_TOKEN}"})
    assert response.status_code == 202 and response.json()["accepted"] == 2
    assert pipeline.messages[0].meta["device_id"] == "gw1" and pipeline.messages[0].topic == "ingest"
    assert {e.device_id for e in pipeline.events.values()} == {"m1", "m2"}


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic abc", f"bearer{TOKEN}", "Bearer 00"])
async def test_missing_or_wrong_token_is_401(hub: tuple[httpx.AsyncClient, MiniPipeline],
                                            header: str | None) -> None:
    client, pipeline = hub
    headers = {"Authorization": header} if header else {}
    response = await client.post("/ingest", json=readings(1), headers=headers)
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
    assert pipeline.messages == []


async def test_body_over_the_limit_is_413(hub: tuple[httpx.AsyncClient, MiniPipeline]) -> None:
    client, pipeline = hub
    big = readings(*range(60))
    response = await client.post("/ingest", json=big, headers=AUTH)
    assert response.status_code == 413 and "2048" in response.json()["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the stream is counted
        for _ in range(10):
            yield b" " * 300

    response = await client.post("/ingest", content=chunks(), headers=AUTH)
    assert response.status_code == 413
    assert pipeline.messages == []


async def test_too_many_lines_or_empty_body(hub: tuple[httpx.AsyncClient, MiniPipeline]) -> None:
    client, _ = hub
    assert (await client.post("/ingest", content=b"[" + b"1," * 60 + b"1]", headers=AUTH)).status_code == 413
    assert (await client.post("/ingest", content=b"", headers=AUTH)).status_code == 400
    assert (await client.post("/ingest", content=b"[]", headers=AUTH)).status_code == 400
    assert (await client.get("/ingest", headers=AUTH)).status_code == 405


async def test_not_stored_is_503_and_retry_counts_once() -> None:
    failing = MiniPipeline(profiles(), fail=RuntimeError("database down"))
    async with client_for(failing) as client:
        response = await client.post("/ingest", json=readings(1), headers=AUTH)
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    slow = RecordingSink(delay_s=5)
    async with client_for(slow, commit_timeout_s=0.1) as client:
        assert (await client.post("/ingest", json=readings(1), headers=AUTH)).status_code == 503


async def test_answer_waits_for_commit() -> None:
    sink = RecordingSink(delay_s=0.3)
    async with client_for(sink) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert (await client.post("/ingest", json=readings(1), headers=AUTH)).status_code == 202
        assert loop.time() - started >= 0.25


async def test_newly_registered_token_is_found_without_restart() -> None:
    endpoints = [DeviceEndpoint(device_id="late", profile_id="acme-http-meter",
                                secrets={"http_token": "t-late"})]
    directory = StaticDirectory([])
    app = Starlette(routes=ingest_routes(RecordingSink(), directory,
                                         HttpConfig(token_miss_refresh_s=0), profiles()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client:
        headers = {"Authorization": "Bearer t-late"}
        assert (await client.post("/ingest", json=readings(1), headers=headers)).status_code == 401
        directory._endpoints = {e.device_id: e for e in endpoints}
        assert (await client.post("/ingest", json=readings(1), headers=headers)).status_code == 202


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
                                max_size=3), max_size=8))
def test_split_is_deterministic_and_line_per_element(items: list[dict[str, object]]) -> None:
    body = orjson.dumps(items)
    lines = split_body(body, "application/json")
    assert lines == split_body(body, "")
    assert [orjson.loads(line) for line in lines] == items
    assert lines == [orjson.dumps(i) for i in items]  # orjson writes no spaces: exact element bytes
    ndjson = b"\n".join(orjson.dumps(i) for i in items)
    assert split_body(ndjson, "application/x-ndjson") == [orjson.dumps(i) for i in items]


def test_array_elements_keep_their_exact_digits() -> None:
    body = b'[ {"e": 123456789012345678901234567890.5} ,\n 1e2, "a,]\\"" ]'
    assert split_body(body, "application/json") == [b'{"e": 123456789012345678901234567890.5}', b"1e2",
                                                     b'"a,]\\""']


@given(st.binary(max_size=200))
@settings(max_examples=100, deadline=None)
def test_hostile_bodies_never_crash_the_splitter(body: bytes) -> None:
    for media in ("application/json", "application/x-ndjson", "text/plain", ""):
        for line in split_body(body, media):
            assert isinstance(line, bytes)
