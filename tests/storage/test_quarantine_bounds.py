"""Bounded quarantine (issue 15 item 7): one entry per identity with a count, a size cap per row, retention."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta

import orjson
from psycopg_pool import AsyncConnectionPool

from tests.storage.test_identity import NOW, feed
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage
from usagehub.metrics import REGISTRY
from usagehub.pipeline.pipeline import Pipeline, PipelineSettings
from usagehub.runtime.config import SHIPPED_PROFILES, HubConfig
from usagehub.runtime.hub import Hub
from usagehub.runtime.profile_files import load_profiles
from usagehub.storage.events import QUARANTINE_PAYLOAD_MAX
from usagehub.storage.quarantine import prune_quarantine
from usagehub.storage.registry import KnownDevices, Registry


def make(pool: AsyncConnectionPool) -> Pipeline:
    profiles = ProfileSet(load_profiles(SHIPPED_PROFILES))
    return Pipeline(pool, profiles, KnownDevices(pool), PipelineSettings(batch_max_wait_ms=5))


def garbage(payload: bytes, topic: str = "meters/x1/reading", at: datetime = NOW) -> RawMessage:
    return RawMessage(transport="mqtt", topic=topic, payload=payload, received_at=at)


async def rows(pool: AsyncConnectionPool) -> list[tuple[object, ...]]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT quarantine_id, seen_count, length(payload), payload_size, payload_sha256, "
                                 "detail FROM quarantine ORDER BY quarantine_id")
        return await cur.fetchall()


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_a_redelivered_message_is_one_entry_with_a_count(pool: AsyncConnectionPool) -> None:
    merged = sample("usagehub_quarantine_merged_total")
    first = await feed(make(pool), [garbage(b"not json"), garbage(b"not json")])   # the same batch
    again = await feed(make(pool), [garbage(b"not json")])                          # after a "restart"
    other = await feed(make(pool), [garbage(b"not json", topic="meters/x2/reading")])
    ids = [r.quarantine_id for r in [*first, *again, *other]]
    assert ids[0] == ids[1] == ids[2] != ids[3]
    assert [(r[1]) for r in await rows(pool)] == [3, 1]
    assert sample("usagehub_quarantine_merged_total") == merged + 2


async def test_a_huge_payload_is_cut_with_its_size_and_hash_kept(pool: AsyncConnectionPool) -> None:
    body = orjson.dumps({"readings": ["x" * 100] * 20_000})  # ~2 MB, not a valid reading
    [receipt] = await feed(make(pool), [garbage(body)])
    [(qid, count, stored, size, sha, detail)] = await rows(pool)
    assert (qid, count, stored, size) == (receipt.quarantine_id, 1, QUARANTINE_PAYLOAD_MAX, len(body))
    assert bytes(sha) == hashlib.sha256(body).digest()  # type: ignore[arg-type]
    assert f"payload of {len(body)} bytes cut" in str(detail)


async def test_retention_removes_old_entries_then_the_oldest_beyond_the_cap(pool: AsyncConnectionPool) -> None:
    old = NOW - timedelta(days=40)
    await feed(make(pool), [garbage(f"old {i}".encode(), at=old) for i in range(3)]
               + [garbage(f"new {i}".encode()) for i in range(5)])
    now = datetime(2026, 11, 2, tzinfo=UTC)
    assert await prune_quarantine(pool, now=now, retention=timedelta(days=30), max_rows=10) == 3
    assert len(await rows(pool)) == 5
    assert await prune_quarantine(pool, now=now, retention=timedelta(days=30), max_rows=2, chunk=2) == 3
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT payload FROM quarantine ORDER BY quarantine_id")
        assert [bytes(r[0]) for r in await cur.fetchall()] == [b"new 3", b"new 4"]


async def test_replay_keeps_a_still_refused_entry_open_and_closes_a_fixed_one(pool: AsyncConnectionPool) -> None:
    pipeline = make(pool)
    hub = Hub(config=HubConfig(), pool=pool, pipeline=pipeline, keys=None, registry=None,  # type: ignore[arg-type]
              billing=None)  # type: ignore[arg-type]
    body = orjson.dumps({"seq": 1, "ts": (NOW - timedelta(hours=1)).isoformat(), "energy_wh": 5, "boot": 1})
    task = asyncio.create_task(pipeline.run())
    try:
        receipt = await (await pipeline.submit(garbage(body, topic="meters/late/reading")))
        qid = receipt.quarantine_id
        assert qid is not None and receipt.reason == "unknown device"
        assert await hub.replay([qid]) == [(qid, "quarantined", "unknown device")]
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT seen_count, replayed_at FROM quarantine WHERE quarantine_id = %s",
                                     (qid,))
            assert await cur.fetchone() == (2, None)          # still open, counted twice
        await Registry(pool).upsert_device(device_id="late", profile_id="acme-em340")
        pipeline.identity.facts._cache.clear()                # (or wait out the 3 s cache)
        assert await hub.replay([qid]) == [(qid, "accepted", None)]
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT replay_outcome FROM quarantine WHERE quarantine_id = %s", (qid,))
            assert await cur.fetchone() == ("accepted",)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
