"""Faults the pipeline survives: readers holding locks, stalled commits, restarts (durable totals)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.conftest import timescale_mode
from tests.storage.test_pipeline import feed, reading
from usagehub import metrics
from usagehub.adapters.base import Outcome
from usagehub.adapters.link import Link
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage
from usagehub.pipeline.pipeline import Pipeline, PipelineSettings
from usagehub.pipeline.usage import UsageWriter
from usagehub.runtime.config import SHIPPED_PROFILES
from usagehub.runtime.profile_files import load_profiles
from usagehub.runtime.readiness import Readiness
from usagehub.storage.ingest_totals import read_totals
from usagehub.storage.partitions import Partitions, add_months, existing_months, month_of
from usagehub.storage.queries import Reads
from usagehub.storage.registry import KnownDevices, Registry

# On TimescaleDB, events is a hypertable: TimescaleDB makes its chunks, there are no partitions to make ahead.
NATIVE_PARTITIONS = pytest.mark.skipif(timescale_mode(), reason="events is a hypertable on TimescaleDB")


async def _pipeline(pool: AsyncConnectionPool, *, seed: bool = True, **settings: float) -> Pipeline:
    if seed:
        registry = Registry(pool)
        await registry.upsert_account(account_id="a1", timezone="Europe/Berlin")
        await registry.upsert_device(device_id="m1", profile_id="acme-em340")
        await registry.bind(device_id="m1", account_id="a1", valid_from=datetime(2020, 1, 1, tzinfo=UTC))
    profiles = ProfileSet(load_profiles(SHIPPED_PROFILES))
    p = Pipeline(pool, profiles, KnownDevices(pool), PipelineSettings(batch_max_wait_ms=5, **settings))  # type: ignore[arg-type]
    p.hooks.append(UsageWriter(profiles).apply)
    return p


def _sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def _at(ts: datetime, seq: int, wh: int) -> RawMessage:
    body = {"seq": seq, "ts": ts.isoformat(), "energy_wh": wh, "boot": 1}
    return RawMessage(transport="mqtt", topic="meters/m1/reading", payload=orjson.dumps(body), received_at=ts)


@pytest.fixture
def reader(database_url: str):  # type: ignore[no-untyped-def]
    """A monitoring client sitting idle inside an open transaction after reading ``events``."""
    conn = psycopg.connect(database_url)
    conn.execute("SELECT count(*) FROM events")  # ACCESS SHARE on events and every partition, held
    yield conn
    conn.rollback()
    conn.close()


@NATIVE_PARTITIONS
async def test_idle_reader_does_not_block_ingest_of_a_new_month(pool: AsyncConnectionPool, reader: object) -> None:
    pipeline = await _pipeline(pool)
    before = _sample("usagehub_lock_timeouts_total", what="partition")
    started = time.monotonic()
    month = datetime(2031, 3, 5, tzinfo=UTC)  # no partition yet: creating it needs locks the reader holds
    outcomes = await asyncio.wait_for(feed(pipeline, [_at(month, 1, 100), _at(month + timedelta(hours=1), 2, 300)]),
                                      timeout=10)
    assert outcomes == [Outcome.ACCEPTED, Outcome.ACCEPTED]
    assert time.monotonic() - started < 5
    assert _sample("usagehub_lock_timeouts_total", what="partition") > before  # gave up, counted
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM events WHERE ts >= '2031-03-01'")
        assert (await cur.fetchone()) == (2,)


@NATIVE_PARTITIONS
async def test_partitions_are_made_ahead_and_a_reader_only_delays_them(pool: AsyncConnectionPool,
                                                                        database_url: str) -> None:
    now = datetime(2033, 6, 20, tzinfo=UTC)
    wanted = {add_months(month_of(now), n) for n in range(3)}
    holder = psycopg.connect(database_url)
    holder.execute("SELECT count(*) FROM events")
    try:
        started = time.monotonic()
        partitions = Partitions(pool, ahead_lock_timeout_ms=300)
        assert await partitions.ahead(now) is False  # gave up within the lock timeout, will retry
        assert time.monotonic() - started < 5
    finally:
        holder.rollback()
        holder.close()
    assert await partitions.ahead(now) is True
    async with pool.connection() as conn:
        assert wanted <= await existing_months(conn)
    assert await Partitions(pool).ahead(now) is True  # idempotent, also for a second hub


async def test_a_lock_held_elsewhere_shows_as_a_stall_and_ingest_resumes(pool: AsyncConnectionPool,
                                                                           database_url: str) -> None:
    pipeline = await _pipeline(pool, lock_timeout_ms=200, stall_after_s=0.3)
    await feed(pipeline, [reading("m1", 1, 0, 1000)])  # the month's partition exists now
    retries = _sample("usagehub_batch_retries_total")
    blocker = psycopg.connect(database_url)
    blocker.execute("LOCK TABLE ingest_totals IN ACCESS EXCLUSIVE MODE")  # a billing system holding a lock
    task = asyncio.create_task(pipeline.run())
    try:
        receipt = await pipeline.submit(reading("m1", 2, 15, 1500))
        deadline = time.monotonic() + 5
        while not (pipeline.stalled and _sample("usagehub_batch_retries_total") > retries) \
                and time.monotonic() < deadline:  # noqa: ASYNC110 — polling metrics, nothing to await
            await asyncio.sleep(0.05)
        assert pipeline.stalled and _sample("usagehub_pipeline_stalled") == 1.0
        assert _sample("usagehub_batch_retries_total") > retries  # gave up waiting, logged, retried
        assert not receipt.done()
        blocker.rollback()
        assert (await asyncio.wait_for(receipt, 15)).outcome is Outcome.ACCEPTED
        assert not pipeline.stalled and pipeline.commit_wait_s() == 0
    finally:
        blocker.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_ingest_totals_survive_a_restart(pool: AsyncConnectionPool) -> None:
    first = await _pipeline(pool)
    broken = RawMessage(transport="mqtt", topic="meters/m1/reading", payload=b"{", received_at=datetime.now(UTC))
    await feed(first, [reading("m1", 1, 0, 1000), reading("m1", 2, 15, 1200), reading("m1", 2, 15, 1200), broken])
    after_first = await read_totals(pool)
    assert {k: after_first[k] for k in ("messages", "accepted", "duplicates", "quarantined")} == \
        {"messages": 4, "accepted": 2, "duplicates": 1, "quarantined": 1}
    second = await _pipeline(pool, seed=False)  # a restarted hub: counts continue, they do not start from zero
    await feed(second, [reading("m1", 3, 30, 1300)])
    await feed(second, [reading("m1", 4, 45, 1400)])  # run() again: loaded once, not added twice
    assert second.totals["accepted"] == 4 and second.totals["messages"] == 6
    assert _sample("usagehub_ingest_stored", kind="accepted") == 4
    assert (await Reads(pool).ingest_totals())["accepted"] == 4


async def test_a_redelivered_bad_message_is_quarantined_once(pool: AsyncConnectionPool) -> None:
    """Holds with the quarantine fingerprint of issue 15 (doors, on main): this branch alone does not dedupe."""
    pipeline = await _pipeline(pool)
    bad = RawMessage(transport="mqtt", topic="meters/m1/reading", payload=b'{"seq": 1, "ts": "never"}',
                     received_at=datetime.now(UTC))
    other = RawMessage(transport="mqtt", topic="meters/m2/reading", payload=bad.payload, received_at=bad.received_at)
    first = await pipeline.submit(bad)
    await feed(pipeline, [])
    again = await feed(pipeline, [bad, other])  # the broker redelivers after a crash; another topic is another item
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM quarantine WHERE replayed_at IS NULL")
        assert (await cur.fetchone()) == (2,)
    assert again == [Outcome.QUARANTINED, Outcome.QUARANTINED]
    assert (await first).quarantine_id is not None


class _Connecting:
    """An adapter as readiness sees it: a link."""

    def __init__(self) -> None:
        self.link = Link("test-readiness")


async def test_ready_only_after_every_adapter_is_up_and_while_commits_flow(pool: AsyncConnectionPool) -> None:
    pipeline = await _pipeline(pool, stall_after_s=0.2)
    mqtt = _Connecting()
    readiness = Readiness({"mqtt": mqtt, "files": object()}, pipeline, {})
    assert readiness.ready()[0] is False and readiness.live() is False  # before the subscription exists
    waiting = asyncio.create_task(readiness.wait_started())
    await asyncio.sleep(0.1)
    assert not waiting.done()
    mqtt.link.connected("subscribed")
    await asyncio.wait_for(waiting, 2)
    assert readiness.ready() == (True, {"started": True, "adapters": {"mqtt": True, "files": True},
                                        "commit_wait_s": 0.0, "stalled": False})
    mqtt.link.lost(ConnectionResetError())
    ok, detail = readiness.ready()
    assert not ok and detail["adapters"]["mqtt"] is False and readiness.live()
    mqtt.link.connected("subscribed")
    await pipeline.submit(reading("m1", 1, 0, 1000))  # nothing commits it: the pipeline is not running
    await asyncio.sleep(0.3)
    ok, detail = readiness.ready()
    assert not ok and detail["stalled"] is True and detail["commit_wait_s"] >= 0.2
    await feed(pipeline, [])  # committed: ready again
    assert readiness.ready()[0] is True
