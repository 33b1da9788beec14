"""Large messages do not stay alive in the pipeline once committed (issue 16: memory never came back)."""

from __future__ import annotations

import asyncio
import tracemalloc
from datetime import UTC, datetime, timedelta

import orjson
from psycopg_pool import AsyncConnectionPool

from usagehub.adapters.base import Outcome, Receipt
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage
from usagehub.pipeline.pipeline import Pipeline, PipelineSettings
from usagehub.runtime.config import SHIPPED_PROFILES
from usagehub.runtime.profile_files import load_profiles
from usagehub.storage.registry import KnownDevices, Registry

T0 = datetime(2026, 10, 1, tzinfo=UTC)
PADDING_MB = 16


async def _submit_large(pipeline: Pipeline, seq: int) -> asyncio.Future[Receipt]:
    # Built here so that the test itself keeps no reference to the payload.
    body = {"seq": seq, "ts": (T0 + timedelta(minutes=seq)).isoformat(), "energy_wh": 1000 + seq,
            "diagnostics": "x" * (PADDING_MB << 20)}
    return await pipeline.submit(RawMessage(transport="mqtt", topic="meters/m1/reading", payload=orjson.dumps(body),
                                            received_at=T0 + timedelta(days=31)))


async def test_a_committed_large_message_is_not_kept_while_the_pipeline_waits(pool: AsyncConnectionPool) -> None:
    registry = Registry(pool)
    await registry.upsert_account(account_id="a1", timezone="UTC")
    await registry.upsert_device(device_id="m1", profile_id="acme-em340")
    await registry.bind(device_id="m1", account_id="a1", valid_from=T0 - timedelta(days=1))
    pipeline = Pipeline(pool, ProfileSet(load_profiles(SHIPPED_PROFILES)), KnownDevices(pool),
                        PipelineSettings(batch_max_wait_ms=5))
    task = asyncio.create_task(pipeline.run())
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        receipts = []
        for seq in (1, 2, 3):
            receipts.append(await (await _submit_large(pipeline, seq)))
        await asyncio.sleep(0.1)  # the pipeline is back to waiting for the next message
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [r.outcome for r in receipts] == [Outcome.ACCEPTED] * 3
    assert peak - before > PADDING_MB << 20  # the messages did pass through this process
    assert held - before < 2 << 20, f"{(held - before) / 2**20:.1f} MB still held after the commits"
