"""The http adapter run standalone: a real uvicorn server on a loopback port."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.adapters.files.minipipe import MiniPipeline
from tests.adapters.http.test_ingest import AUTH, DEVICES, profiles, readings
from usagehub.adapters import load
from usagehub.adapters.base import AdapterSettings
from usagehub.adapters.http.adapter import HttpAdapter
from usagehub.errors import PermanentAdapterError


def make(tmp_path: Path, port: int = 0) -> HttpAdapter:
    factory = load("http")
    config = factory.config_model.model_validate({"host": "127.0.0.1", "port": port})
    adapter = factory.create(config, AdapterSettings(profiles=profiles(), devices=DEVICES, data_dir=tmp_path))
    assert isinstance(adapter, HttpAdapter)
    return adapter


async def test_standalone_server_ingests_and_stops_on_cancel(tmp_path: Path) -> None:
    pipeline = MiniPipeline(profiles())
    async with make(tmp_path) as adapter:
        task = asyncio.create_task(adapter.run(pipeline))
        for _ in range(500):  # uvicorn offers no started event
            if adapter.server is not None and adapter.server.started:
                break
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{adapter.port}") as client:
            response = await client.post("/ingest", json=readings(1, 2), headers=AUTH)
        assert response.status_code == 202 and response.json()["accepted"] == 2
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(pipeline.events) == 2


async def test_busy_port_fails_at_start(tmp_path: Path) -> None:
    async with make(tmp_path) as first:
        with pytest.raises(PermanentAdapterError, match="cannot bind"):
            async with make(tmp_path, first.port):
                pass
