"""The CoAP adapter against aiocoap's own client: OSCORE, plain profiles, quarantine, block-wise."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiocoap
import cbor2
import orjson
import pytest
from aiocoap import oscore
from aiocoap.numbers.codes import Code

from tests.adapters.coap.support import Hub, Installer, profiles, start, stop
from tests.adapters.files.minipipe import MiniPipeline
from tests.fakes import RecordingSink
from usagehub.adapters.base import Outcome, Receipt


async def post(client: aiocoap.Context, uri: str, payload: bytes, *, cf: int | None = 60,
               code: Code = Code.POST) -> aiocoap.Message:
    request = aiocoap.Message(code=code, uri=uri, payload=payload)
    if cf is not None:
        request.opt.content_format = cf
    async with asyncio.timeout(20):
        return await client.request(request).response


def reading(seq: int, e: int = 1000) -> bytes:
    return cbor2.dumps({"seq": seq, "ts": 1_700_000_000 + seq, "e": e})


async def test_oscore_reading_is_acknowledged_after_commit(hub: Hub, oscore_client: Installer) -> None:
    client = oscore_client(hub.port)
    response = await post(client, hub.uri("u/dev1"), reading(1))
    assert response.code == Code.CHANGED
    [message] = hub.pipeline.messages
    assert message.transport == "coap" and message.topic == "u/dev1" and message.payload == reading(1)
    assert message.meta["device_id"] == "dev1" and message.meta["profile"] == "acme-coap-meter"
    assert message.meta["auth"] == "oscore" and message.meta["content_format"] == "60"
    [event] = hub.pipeline.events.values()
    assert (event.device_id, event.event_id, str(event.value)) == ("dev1", "1", "1.000")


async def test_redelivered_reading_is_acknowledged_and_counted_once(
        hub: Hub, oscore_client: Installer) -> None:
    client = oscore_client(hub.port)
    for _ in range(3):
        assert (await post(client, hub.uri("u/dev1"), reading(7))).code == Code.CHANGED
    assert len(hub.pipeline.messages) == 3 and len(hub.pipeline.events) == 1


async def test_oscore_device_cannot_report_for_another(hub: Hub, oscore_client: Installer) -> None:
    client = oscore_client(hub.port)
    response = await post(client, hub.uri("u/dev2"), reading(1))
    assert response.code == Code.FORBIDDEN
    assert hub.pipeline.messages == []


async def test_device_registered_for_another_profile_is_forbidden(
        hub: Hub, oscore_client: Installer) -> None:
    client = oscore_client(hub.port, "dev2", "0102030405060708090a0b0c0d0e0f10"[::-1], "02")
    assert (await post(client, hub.uri("u/dev2"), reading(1))).code == Code.CHANGED
    assert (await post(client, hub.uri("b/dev2"), cbor2.dumps({"r": []}))).code == Code.FORBIDDEN


async def test_plain_request_to_protected_profile_is_unauthorized(hub: Hub, client: aiocoap.Context) -> None:
    response = await post(client, hub.uri("u/dev1"), reading(1))
    assert response.code == Code.UNAUTHORIZED
    assert b"OSCORE" in response.payload
    assert hub.pipeline.messages == []


async def test_wrong_key_is_unauthorized(hub: Hub, oscore_client: Installer) -> None:
    client = oscore_client(hub.port, "stranger", "ff" * 16, "09")  # kid 09 is nobody's
    with pytest.raises(oscore.NotAProtectedMessage) as refused:  # the 4.01 comes back unprotected
        await post(client, hub.uri("u/dev1"), reading(1))
    assert refused.value.plain_message.code == Code.UNAUTHORIZED
    assert hub.pipeline.messages == []


async def test_undecodable_payload_is_quarantined_and_answered_400(
        hub: Hub, oscore_client: Installer) -> None:
    client = oscore_client(hub.port)
    response = await post(client, hub.uri("u/dev1"), b"\xff\x00garbage")
    assert response.code == Code.BAD_REQUEST
    assert response.payload.startswith(b"quarantined: not CBOR")
    [(message, reason)] = hub.pipeline.quarantine
    assert message.payload == b"\xff\x00garbage" and reason.startswith("not CBOR")


async def test_unauthenticated_profile_takes_registered_devices_only(hub: Hub,
                                                                   client: aiocoap.Context) -> None:
    body = orjson.dumps({"seq": 1, "ts": "2026-01-01T00:00:00Z", "litres": 12.5})
    ok = await post(client, hub.uri("open/open1"), body, cf=50, code=Code.PUT)
    assert ok.code == Code.CHANGED
    assert hub.pipeline.messages[0].meta["auth"] == "none"
    unknown = await post(client, hub.uri("open/nobody"), body, cf=50)
    assert unknown.code == Code.UNAUTHORIZED
    assert (await post(client, hub.uri("nowhere/x"), body)).code == Code.NOT_FOUND
    get = await client.request(aiocoap.Message(code=Code.GET, uri=hub.uri("open/open1"))).response
    assert get.code == Code.METHOD_NOT_ALLOWED
    assert len(hub.pipeline.messages) == 1


async def test_large_batch_arrives_blockwise(hub: Hub, oscore_client: Installer) -> None:
    client = oscore_client(hub.port, name="bat1", sender_id="03")
    batch = cbor2.dumps({"r": [{"seq": i, "ts": 1_700_000_000 + i, "e": i} for i in range(150)]})
    assert 1024 < len(batch) < 4096  # more than one block, less than the limit
    response = await post(client, hub.uri("b/bat1"), batch)
    assert response.code == Code.CHANGED
    [message] = hub.pipeline.messages
    assert message.payload == batch
    assert len(hub.pipeline.events) == 150


async def test_body_over_the_limit_is_refused(hub: Hub, oscore_client: Installer) -> None:
    client = oscore_client(hub.port)
    batch = cbor2.dumps({"r": [{"seq": i, "ts": 1_700_000_000 + i, "e": i} for i in range(600)]})
    assert len(batch) > 4096
    response = await post(client, hub.uri("b/dev1"), batch)
    assert response.code == Code.REQUEST_ENTITY_TOO_LARGE
    assert hub.pipeline.messages == []


async def test_answer_waits_for_the_commit(tmp_path: Path, oscore_client: Installer) -> None:
    sink = RecordingSink(delay_s=0.4)
    adapter, task, port = await start(tmp_path, sink)
    try:
        client = oscore_client(port)
        started = time.monotonic()
        response = await post(client, f"coap://127.0.0.1:{port}/u/dev1", reading(1))
        assert response.code == Code.CHANGED
        assert time.monotonic() - started >= 0.35
    finally:
        await stop(adapter, task)


@pytest.mark.parametrize("failure", [RuntimeError("database down"), asyncio.CancelledError()])
async def test_commit_failure_answers_503(tmp_path: Path, client: aiocoap.Context,
                                          failure: BaseException) -> None:
    adapter, task, port = await start(tmp_path, MiniPipeline(profiles(), fail=failure))
    try:
        body = orjson.dumps({"seq": 1, "ts": "2026-01-01T00:00:00Z", "litres": 1})
        response = await post(client, f"coap://127.0.0.1:{port}/open/open1", body, cf=50)
        assert response.code == Code.SERVICE_UNAVAILABLE and response.opt.max_age == 5
    finally:
        await stop(adapter, task)


async def test_commit_timeout_answers_503(tmp_path: Path, client: aiocoap.Context) -> None:
    adapter, task, port = await start(tmp_path, RecordingSink(delay_s=5), commit_timeout_s=0.2)
    try:
        body = orjson.dumps({"seq": 1, "ts": "2026-01-01T00:00:00Z", "litres": 1})
        response = await post(client, f"coap://127.0.0.1:{port}/open/open1", body, cf=50)
        assert response.code == Code.SERVICE_UNAVAILABLE and b"timed out" in response.payload
    finally:
        await stop(adapter, task)


async def test_quarantined_receipt_reason_reaches_the_device(tmp_path: Path, client: aiocoap.Context) -> None:
    sink = RecordingSink(lambda m: Receipt(outcome=Outcome.QUARANTINED, reason="unknown device"))
    adapter, task, port = await start(tmp_path, sink)
    try:
        response = await post(client, f"coap://127.0.0.1:{port}/open/open1", b"{}", cf=50)
        assert response.code == Code.BAD_REQUEST and response.payload == b"quarantined: unknown device"
    finally:
        await stop(adapter, task)


async def test_oscore_state_survives_a_restart(tmp_path: Path, oscore_client: Installer) -> None:
    pipeline_sink = RecordingSink()
    adapter, task, port = await start(tmp_path, pipeline_sink)
    client = oscore_client(port)
    uri = f"coap://127.0.0.1:{port}/u/dev1"
    try:
        assert (await post(client, uri, reading(1))).code == Code.CHANGED
    finally:
        await stop(adapter, task)
    assert list((tmp_path / "coap" / "oscore").glob("dev1-*/sequence.json"))
    adapter, task, _ = await start(tmp_path, pipeline_sink, port=port)
    try:
        assert (await post(client, uri, reading(2))).code == Code.CHANGED
    finally:
        await stop(adapter, task)
    assert len(pipeline_sink.messages) == 2


@pytest.mark.parametrize("bad", [{"oscore_master_secret": "zz"},
                                 {"oscore_master_secret": "01", "oscore_sender_id": "00",
                                  "oscore_recipient_id": "00"}])
def test_bad_device_keys_are_skipped(tmp_path: Path, bad: dict[str, str]) -> None:
    from usagehub.adapters.base import DeviceEndpoint
    from usagehub.adapters.coap.security import DeviceCredentials

    creds = DeviceCredentials(tmp_path)
    creds.load([DeviceEndpoint(device_id="x", profile_id=None, secrets=bad),
                DeviceEndpoint(device_id="ok", profile_id=None, secrets={"oscore_master_secret": "01"})])
    assert len(creds) == 1
    creds.close()


async def test_replay_window_lost_in_a_crash_is_recovered_with_echo(tmp_path: Path,
                                                                    oscore_client: Installer) -> None:
    sink = RecordingSink()
    adapter, task, port = await start(tmp_path, sink)
    client = oscore_client(port)
    uri = f"coap://127.0.0.1:{port}/u/dev1"
    try:
        assert (await post(client, uri, reading(1))).code == Code.CHANGED
    finally:
        await stop(adapter, task)
    [state] = (tmp_path / "coap" / "oscore").glob("dev1-*/sequence.json")
    saved = json.loads(state.read_text())
    state.write_text(json.dumps({**saved, "received": "unknown"}))  # what a killed hub leaves
    adapter, task, _ = await start(tmp_path, sink, port=port)
    try:
        assert (await post(client, uri, reading(2))).code == Code.CHANGED  # after a 4.01 Echo round trip
    finally:
        await stop(adapter, task)
    assert [m.payload for m in sink.messages] == [reading(1), reading(2)]
