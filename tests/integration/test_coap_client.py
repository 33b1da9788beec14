"""The CoAP adapter against libcoap's coap-client (a real, independent CoAP stack)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from tests.adapters.coap.support import profiles, start, stop
from tests.adapters.files.minipipe import MiniPipeline
from tests.peers import require_binary
from usagehub.metrics import REGISTRY

pytestmark = pytest.mark.integration


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[tuple[int, MiniPipeline]]:
    pipeline = MiniPipeline(profiles())
    adapter, task, port = await start(tmp_path, pipeline, max_body_bytes=8192)
    yield port, pipeline
    await stop(adapter, task)


async def coap_client(*args: str) -> tuple[int, str]:
    """Run coap-client-notls; its return code and what it printed (errors go to stderr)."""
    binary = require_binary("coap-client-notls")
    proc = await asyncio.create_subprocess_exec(binary, "-B", "10", *args,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, (out + err).decode(errors="replace")


def reading(seq: int) -> bytes:
    return orjson.dumps({"seq": seq, "ts": "2026-01-01T00:00:00Z", "litres": 3.5})


async def test_plain_profile_accepts_json_from_coap_client(hub: tuple[int, MiniPipeline]) -> None:
    port, pipeline = hub
    code, printed = await coap_client("-m", "post", "-t", "50", "-e", reading(1).decode(),
                                      f"coap://127.0.0.1:{port}/open/open1")
    assert (code, printed) == (0, "")
    [event] = pipeline.events.values()
    assert (event.device_id, event.meter, str(event.value)) == ("open1", "water", "3.5")


async def test_non_confirmable_put_is_taken_too(hub: tuple[int, MiniPipeline]) -> None:
    port, pipeline = hub
    code, _ = await coap_client("-m", "put", "-N", "-t", "50", "-e", reading(2).decode(),
                                f"coap://127.0.0.1:{port}/open/open1")
    assert code == 0
    await asyncio.sleep(0.2)
    assert len(pipeline.events) == 1


async def test_undecodable_input_gets_400_with_reason(hub: tuple[int, MiniPipeline]) -> None:
    port, pipeline = hub
    _, printed = await coap_client("-m", "post", "-t", "50", "-e", "nojson",
                                   f"coap://127.0.0.1:{port}/open/open1")
    assert printed.startswith("4.00 quarantined: not JSON")
    assert [m.payload for m, _ in pipeline.quarantine] == [b"nojson"]


async def test_unauthenticated_request_to_oscore_profile_gets_401(hub: tuple[int, MiniPipeline]) -> None:
    port, pipeline = hub
    _, printed = await coap_client("-m", "post", "-e", "x", f"coap://127.0.0.1:{port}/u/dev1")
    assert printed.strip() == "4.01 OSCORE required"
    _, printed = await coap_client("-m", "post", "-e", "x", f"coap://127.0.0.1:{port}/open/stranger")
    assert printed.strip() == "4.01 unknown device"
    assert pipeline.messages == []


async def test_blockwise_batch_from_coap_client(hub: tuple[int, MiniPipeline], tmp_path: Path) -> None:
    port, pipeline = hub
    body = orjson.dumps({"pad": "x" * 3000, "seq": 9, "ts": "2026-01-01T00:00:00Z", "litres": 1})
    (tmp_path / "body.json").write_bytes(body)
    code, printed = await coap_client("-m", "post", "-b", "64", "-t", "50", "-f", str(tmp_path / "body.json"),
                                      f"coap://127.0.0.1:{port}/open/open1")
    assert (code, printed) == (0, "")
    [message] = pipeline.messages
    assert message.payload == body


async def test_blockwise_body_over_limit_gets_413(hub: tuple[int, MiniPipeline], tmp_path: Path) -> None:
    port, pipeline = hub
    (tmp_path / "big.json").write_bytes(b"[" + b"1," * 6000 + b"1]")
    _, printed = await coap_client("-m", "post", "-b", "256", "-t", "50", "-f", str(tmp_path / "big.json"),
                                   f"coap://127.0.0.1:{port}/open/open1")
    assert printed.startswith("4.13")
    assert pipeline.messages == []


async def test_unauthenticated_requests_are_rate_limited_per_address(tmp_path: Path) -> None:
    pipeline = MiniPipeline(profiles())
    limit = {"per_source_per_s": 0.01, "burst": 2}
    adapter, task, port = await start(tmp_path, pipeline, unauthenticated_rate_limit=limit)
    try:
        before = REGISTRY.get_sample_value("usagehub_door_dropped_total", {"door": "coap", "reason": "rate limited"})
        answers = [await coap_client("-m", "post", "-t", "50", "-e", reading(seq).decode(),
                                     f"coap://127.0.0.1:{port}/open/open1") for seq in range(4)]
        after = REGISTRY.get_sample_value("usagehub_door_dropped_total", {"door": "coap", "reason": "rate limited"})
    finally:
        await stop(adapter, task)
    assert [a[0] for a in answers[:2]] == [0, 0]
    assert all("4.29" in printed for _, printed in answers[2:])
    assert len(pipeline.events) == 2
    assert (after or 0) - (before or 0) == 2


async def test_open_path_refuses_a_device_registered_without_that_profile(hub: tuple[int, MiniPipeline]) -> None:
    port, pipeline = hub
    answers = [await coap_client("-m", "post", "-t", "50", "-e", reading(1).decode(),
                                 f"coap://127.0.0.1:{port}/open/{device}") for device in ("noprofile", "dev2")]
    assert all("4.03" in printed for _, printed in answers)   # no profile / a profile that needs OSCORE
    assert pipeline.events == {} and pipeline.messages == []
