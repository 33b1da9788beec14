"""Two tenants and a hostile meter: what a polled DLMS meter says cannot put usage on another tenant's device."""

from __future__ import annotations

import asyncio
from pathlib import Path

from psycopg_pool import AsyncConnectionPool

from tests.adapters.dlms.meters import SERIAL, meter_conf, sim_meter
from tests.fakes import StaticDirectory
from usagehub.adapters.base import AdapterSettings, DeviceEndpoint, Receipt
from usagehub.adapters.dlms.adapter import DlmsAdapter
from usagehub.adapters.dlms.config import DlmsConfig
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage
from usagehub.core.profiles import parse_profile
from usagehub.pipeline import identity
from usagehub.pipeline.pipeline import Pipeline, PipelineSettings
from usagehub.storage.registry import KnownDevices, Registry

# A careless profile: the device id is whatever serial number the meter reports.
HOSTILE = parse_profile("""
id: test-dlms-serial
match: {transport: dlms}
decode: {type: dlms_poll, registers: ["1.0.1.8.0.255"], data: ["0.0.96.1.0.255"]}
device_id: "$['0.0.96.1.0.255']"
timestamp: "$.ts"
poll: {interval_s: 60}
meters:
  energy: {oid: "1.0.1.8.0.255", kind: cumulative, scale: 0.001, unit: kWh, aggregation: sum}
""", "test-dlms-serial.yaml")
PLAIN = parse_profile("""
id: test-dlms-plain
match: {transport: dlms}
decode: {type: dlms_poll, registers: ["1.0.1.8.0.255"], data: ["0.0.96.1.0.255"]}
timestamp: "$.ts"
poll: {interval_s: 60}
meters:
  energy: {oid: "1.0.1.8.0.255", kind: cumulative, scale: 0.001, unit: kWh, aggregation: sum}
""", "test-dlms-plain.yaml")


class _Collect:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline, self.futures = pipeline, []  # type: ignore[var-annotated]

    async def submit(self, message: RawMessage) -> asyncio.Future[Receipt]:
        future = await self.pipeline.submit(message)
        self.futures.append(future)
        return future


async def test_a_meter_cannot_write_for_another_tenants_device(pool: AsyncConnectionPool, tmp_path: Path) -> None:
    registry = Registry(pool)
    await registry.upsert_device(device_id="a-meter", tenant="A", profile_id=HOSTILE.id)
    await registry.upsert_device(device_id="a-plain", tenant="A", profile_id=PLAIN.id)
    await registry.upsert_device(device_id="b-meter", tenant="B", profile_id=HOSTILE.id)
    pipeline = Pipeline(pool, ProfileSet([HOSTILE, PLAIN]), KnownDevices(pool), PipelineSettings(batch_max_wait_ms=5))
    conf = meter_conf()
    conf["objects"][SERIAL]["value"] = "b-meter"  # tenant A's meter claims to be tenant B's
    with sim_meter(tmp_path, conf) as meter:
        endpoints = [DeviceEndpoint(device_id=d, profile_id=p.id, address="127.0.0.1", port=meter.port)
                     for d, p in (("a-meter", HOSTILE), ("a-plain", PLAIN))]
        adapter = DlmsAdapter(DlmsConfig(jitter_s=0), AdapterSettings(
            profiles=[HOSTILE, PLAIN], devices=StaticDirectory(endpoints), data_dir=tmp_path / "data"))
        sink = _Collect(pipeline)
        task = asyncio.create_task(pipeline.run())
        try:
            async with adapter:
                for endpoint in endpoints:
                    assert await adapter.poll_device(endpoint, adapter.plans[endpoint.profile_id or ""], sink)
            receipts = [await f for f in sink.futures]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await pipeline.drain()
    assert [(r.outcome.value, r.reason, r.device_id) for r in receipts] == [
        ("quarantined", identity.NOT_ENTITLED, "b-meter"), ("accepted", None, "a-plain")]
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT device_id FROM events")
        assert [r[0] for r in await cur.fetchall()] == ["a-plain"]
