"""A real TCP client against the binary listener and the real pipeline: the frame's device must be registered
under the listener's profile (the door has no credential, so a valid CRC is not enough)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from psycopg_pool import AsyncConnectionPool

from tests.core.codecs.binary_records import pulse_record
from usagehub.adapters.base import AdapterSettings
from usagehub.adapters.binary import FACTORY, BinaryAdapter, BinaryConfig
from usagehub.core.decode import ProfileSet
from usagehub.pipeline import identity
from usagehub.pipeline.pipeline import Pipeline, PipelineSettings
from usagehub.runtime.config import SHIPPED_PROFILES
from usagehub.runtime.profile_files import load_profiles
from usagehub.storage.registry import DeviceDirectorySql, KnownDevices, Registry


async def test_tcp_frames_are_stored_only_for_devices_registered_under_the_listeners_profile(
        pool: AsyncConnectionPool, tmp_path: Path) -> None:
    reg = Registry(pool)
    await reg.upsert_device(device_id="7", tenant="A", profile_id="acme-pulse-bin")
    await reg.upsert_device(device_id="9", tenant="B", profile_id="acme-pulse-bin")
    await reg.upsert_device(device_id="8", tenant="A", profile_id="mbus-heat-meter")  # another door's device
    await reg.upsert_device(device_id="6", tenant="B")                                 # no profile at all
    profiles = load_profiles(SHIPPED_PROFILES)
    pipeline = Pipeline(pool, ProfileSet(profiles), KnownDevices(pool), PipelineSettings(batch_max_wait_ms=5))
    config = BinaryConfig.model_validate(
        {"listeners": [{"profile": "acme-pulse-bin", "host": "127.0.0.1", "port": 0}]})
    adapter = FACTORY.create(config, AdapterSettings(profiles=profiles, devices=DeviceDirectorySql(pool),
                                                     data_dir=tmp_path))
    assert isinstance(adapter, BinaryAdapter)
    run = asyncio.create_task(pipeline.run())
    async with adapter:
        serve = asyncio.create_task(adapter.run(pipeline))
        async with asyncio.timeout(5):
            await adapter.ready.wait()
        _, writer = await asyncio.open_connection("127.0.0.1", adapter.bound[0])
        for device in (7, 8, 6, 5, 9):
            writer.write(pulse_record(device=device, seq=device))
        await writer.drain()
        async with asyncio.timeout(20):
            while pipeline.totals["messages"] < 5:  # noqa: ASYNC110 — the pipeline offers only counters
                await asyncio.sleep(0.05)
        writer.close()
        serve.cancel()
        await asyncio.gather(serve, return_exceptions=True)
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT DISTINCT device_id FROM events ORDER BY 1")
        assert [r[0] for r in await cur.fetchall()] == ["7", "9"]
        cur = await conn.execute("SELECT device_id, reason FROM quarantine ORDER BY device_id")
        assert await cur.fetchall() == [("5", identity.UNKNOWN_DEVICE), ("6", identity.NO_PROFILE),
                                        ("8", identity.PROFILE_MISMATCH)]
