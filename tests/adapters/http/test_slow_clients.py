"""Slow clients on the HTTP door: partial headers and a trickling body are cut off; normal requests pass."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.adapters.files.minipipe import MiniPipeline
from tests.adapters.http.test_ingest import AUTH, DEVICES, profiles, readings
from usagehub.adapters import load
from usagehub.adapters.base import AdapterSettings
from usagehub.adapters.http.adapter import HttpAdapter
from usagehub.metrics import REGISTRY


@pytest.fixture
async def adapter(tmp_path: Path) -> AsyncIterator[HttpAdapter]:
    async for made in serving(tmp_path, header_timeout_s=0.5, body_timeout_s=0.5):
        yield made


async def serving(tmp_path: Path, **settings: float) -> AsyncIterator[HttpAdapter]:
    factory = load("http")
    config = factory.config_model.model_validate({"host": "127.0.0.1", "port": 0, **settings})
    made = factory.create(config, AdapterSettings(profiles=profiles(), devices=DEVICES, data_dir=tmp_path))
    assert isinstance(made, HttpAdapter)
    async with made:
        task = asyncio.create_task(made.run(MiniPipeline(profiles())))
        for _ in range(500):
            if made.server is not None and made.server.started:
                break
            await asyncio.sleep(0.01)
        yield made
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def closed_after(port: int, data: bytes) -> float:
    """Send ``data`` and nothing more; seconds until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(5):
        while await reader.read(4096):
            pass
    writer.close()
    return time.monotonic() - started


def dropped(phase: str) -> float:
    return REGISTRY.get_sample_value("usagehub_door_dropped_total", {"door": "http", "reason": f"slow {phase}"}) or 0


async def test_partial_headers_are_cut_off(adapter: HttpAdapter) -> None:
    before = dropped("headers")
    elapsed = await closed_after(adapter.port, b"POST /ingest HTTP/1.1\r\nHost: x\r\n")
    assert 0.3 < elapsed < 3
    assert dropped("headers") == before + 1


async def test_a_trickling_body_is_cut_off(adapter: HttpAdapter) -> None:
    before = dropped("body")
    head = b"POST /ingest HTTP/1.1\r\nHost: x\r\nAuthorization: " + AUTH["Authorization"].encode()
    elapsed = await closed_after(adapter.port, head + b"\r\nContent-Length: 1000\r\n\r\n[{")
    assert 0.3 < elapsed < 3
    assert dropped("body") == before + 1


async def test_kept_alive_requests_in_time_still_work(adapter: HttpAdapter) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{adapter.port}") as client:
        for seq in (1, 3):
            response = await client.post("/ingest", json=readings(seq, seq + 1), headers=AUTH)
            assert response.status_code == 202
            await asyncio.sleep(0.3)  # twice within the deadline on one connection


async def test_connections_beyond_the_cap_are_closed_at_once(tmp_path: Path) -> None:
    async for made in serving(tmp_path, header_timeout_s=5, max_connections=3):
        before = REGISTRY.get_sample_value("usagehub_door_dropped_total",
                                           {"door": "http", "reason": "connection cap"}) or 0
        held = [await asyncio.open_connection("127.0.0.1", made.port) for _ in range(3)]
        for _, writer in held:  # slow clients, each holding a connection within the header deadline
            writer.write(b"POST /ingest HTTP/1.1\r\n")
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", made.port)
        started = time.monotonic()
        async with asyncio.timeout(2):
            assert await reader.read(100) == b""  # closed, not parked until the others time out
        assert time.monotonic() - started < 1
        assert REGISTRY.get_sample_value("usagehub_door_dropped_total",
                                         {"door": "http", "reason": "connection cap"}) == before + 1
        held[0][1].close()
        await asyncio.sleep(0.1)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{made.port}") as client:
            assert (await client.post("/ingest", json=readings(1, 2), headers=AUTH)).status_code == 202
        for _, w in [*held[1:], (reader, writer)]:
            w.close()
