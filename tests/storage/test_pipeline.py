"""The ingest pipeline against a real PostgreSQL: identity, quarantine, usage (the points' entries)."""

from __future__ import annotations

import asyncio
import functools
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from usagehub.adapters.base import Outcome
from usagehub.core.counters import Reading
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage
from usagehub.errors import StorageUnavailable
from usagehub.pipeline.pipeline import Pipeline, PipelineSettings
from usagehub.pipeline.sessions import SessionEngine
from usagehub.pipeline.usage import UsageWriter
from usagehub.runtime.config import SHIPPED_PROFILES
from usagehub.runtime.profile_files import load_profiles
from usagehub.storage.queries import Reads
from usagehub.storage.registry import KnownDevices, Registry
from usagehub.storage.usage import stored_neighbourhoods

T0 = datetime(2026, 10, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
async def pipeline(pool: AsyncConnectionPool) -> Pipeline:
    registry = Registry(pool)
    await registry.upsert_account(account_id="a1", timezone="Europe/Berlin")
    for dev in ("m1", "m2"):
        await registry.upsert_device(device_id=dev, profile_id="acme-em340")
        await registry.bind(device_id=dev, account_id="a1", valid_from=T0 - timedelta(days=30))
    profiles = ProfileSet(load_profiles(SHIPPED_PROFILES))
    p = Pipeline(pool, profiles, KnownDevices(pool), PipelineSettings(batch_max_wait_ms=5))
    usage = UsageWriter(profiles)
    # The entries are stored as the session points' origins (migration 0041): the sessions stage stores them.
    p.hooks += [usage.apply, SessionEngine(profiles, entries=lambda: usage.last_entries, clock=lambda: NOW).apply]
    return p


def reading(device: str, seq: int, minutes: int, wh: int, boot: int = 1) -> RawMessage:
    body = {"seq": seq, "ts": (T0 + timedelta(minutes=minutes)).isoformat(), "energy_wh": wh, "boot": boot}
    return RawMessage(transport="mqtt", topic=f"meters/{device}/reading", payload=orjson.dumps(body),
                      received_at=NOW)


async def feed(pipeline: Pipeline, messages: list[RawMessage]) -> list[Outcome]:
    task = asyncio.create_task(pipeline.run())
    try:
        futures = [await pipeline.submit(m) for m in messages]
        return [(await f).outcome for f in futures]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pipeline.drain()


async def total_kwh(pool: AsyncConnectionPool, device: str = "m1") -> Decimal:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT coalesce(sum(quantity), 0) FROM usage_entries WHERE device_id = %s "
                                 "AND meter = 'energy'", (device,))
        row = await cur.fetchone()
    assert row is not None
    return Decimal(row[0])


async def test_duplicates_in_and_across_batches_count_once(pipeline: Pipeline, pool: AsyncConnectionPool) -> None:
    msgs = [reading("m1", i, 15 * i, 1000 + 100 * i) for i in range(10)]
    first = await feed(pipeline, msgs + msgs[:3])
    assert first.count(Outcome.ACCEPTED) == 10 and first.count(Outcome.DUPLICATE) == 3
    again = await feed(pipeline, msgs)
    assert set(again) == {Outcome.DUPLICATE}
    assert await total_kwh(pool) == Decimal("0.900")


async def test_late_reading_splits_delta_and_total_is_order_invariant(pipeline: Pipeline,
                                                                      pool: AsyncConnectionPool) -> None:
    msgs = [reading("m1", i, 15 * i, 5000 + 250 * i) for i in range(8)]
    await feed(pipeline, [msgs[0], msgs[7]])          # one big delta first
    await feed(pipeline, msgs[3:5])                    # then late readings land inside it
    await feed(pipeline, list(reversed(msgs[1:3])) + msgs[5:7])
    assert await total_kwh(pool) == Decimal("1.750")
    reads = Reads(pool)
    buckets = await reads.usage(tenant="default", account_id="a1", bucket="HOUR", since=T0,
                                until=T0 + timedelta(hours=3), meter="energy")
    # An interval's usage lands where it starts (as billing and the series count it): 15-min deltas of
    # 0.25 kWh, four starting in the first hour, three in the second.
    assert [b.quantity for b in buckets] == [Decimal("1.000"), Decimal("0.750")]
    assert {b.unit for b in buckets} == {"kWh"}


async def test_wrap_and_reset(pipeline: Pipeline, pool: AsyncConnectionPool) -> None:
    top = 2**32
    msgs = [reading("m2", 1, 0, top - 500), reading("m2", 2, 15, 700),           # wrap: +1200 Wh
            reading("m2", 3, 30, 900, boot=2), reading("m2", 4, 45, 1000, boot=2)]  # reset: +900, +100
    await feed(pipeline, msgs)
    assert await total_kwh(pool, "m2") == Decimal("2.200")


@pytest.mark.parametrize(("topic", "payload", "reason"), [
    ("meters/m1/reading", b"not json at all", "not JSON"),
    ("meters/ghost/reading", b'{"seq":1,"ts":"2026-10-01T00:00:00Z","energy_wh":5}', "unknown device"),
    ("meters/m1/reading", b'{"seq":1,"energy_wh":5}', "missing field"),
    ("meters/m1/reading", b'{"seq":1,"ts":"2026-10-01T00:00:00Z","energy_wh":-5}', "value out of range"),
    ("meters/m1/reading", b'{"seq":1,"ts":"2026-10-01T00:00:00","energy_wh":5}', "timestamp without zone"),
    ("meters/m1/reading", b'{"seq":1,"ts":"2026-10-01T00:00:00Z","energy_wh":"lots"}', "not a number"),
    ("meters/m1/reading", b'{"seq":1,"ts":"2026-10-01T00:00:00Z","energy_wh":1e300}', "value out of range"),
    ("elsewhere/x", b"{}", "unknown topic"),
    ("meters/m1/reading", b"[" * 100_000, "not JSON"),
    ("meters/m1/reading", b'{"seq":1,"ts":"2099-10-01T00:00:00Z","energy_wh":5}', "timestamp in the future"),
])
async def test_bad_messages_are_quarantined_with_raw_bytes(pipeline: Pipeline, pool: AsyncConnectionPool,
                                                           topic: str, payload: bytes, reason: str) -> None:
    message = RawMessage(transport="mqtt", topic=topic, payload=payload, received_at=NOW)
    assert await feed(pipeline, [message]) == [Outcome.QUARANTINED]
    rows = await Reads(pool).quarantine(tenant="default", reason=None, after=None, limit=10)
    assert [(r["reason"], bytes(r["payload"]), r["topic"]) for r in rows] == [(reason, payload, topic)]
    assert pipeline.totals["quarantined"] == 1


async def test_gateway_batch_yields_one_event_per_reading(pool: AsyncConnectionPool) -> None:
    registry = Registry(pool)
    for i in range(50):
        await registry.upsert_device(device_id=f"g{i}")
    await registry.upsert_device(device_id="dc1", profile_id="acme-dc100-gateway")
    await registry.attach_to_gateway(gateway_id="dc1", device_ids=[f"g{i}" for i in range(50)])
    profiles = ProfileSet(load_profiles(SHIPPED_PROFILES))
    pipeline = Pipeline(pool, profiles, KnownDevices(pool))
    body = {"readings": [{"meter": f"g{i}", "seq": 1, "ts": T0.isoformat(), "energy_wh": i} for i in range(50)]}
    message = RawMessage(transport="mqtt", topic="gateways/dc1/batch", payload=orjson.dumps(body), received_at=NOW)
    task = asyncio.create_task(pipeline.run())
    receipt = await (await pipeline.submit(message))
    task.cancel()
    assert (receipt.outcome, receipt.accepted) == (Outcome.ACCEPTED, 50)


async def test_late_readings_of_several_registers_in_one_batch(pipeline: Pipeline, pool: AsyncConnectionPool) -> None:
    """Late readings of two meters land in one batch (their stored neighbours are read in one round trip):
    every delta is split where it belongs, and each meter's entries sum to its true total."""
    one_lane = Pipeline(pool, pipeline.profiles, pipeline.devices,
                        PipelineSettings(batch_max_wait_ms=50, commit_lanes=1))  # both meters in one batch
    one_lane.hooks = pipeline.hooks
    pipeline = one_lane
    m1 = [reading("m1", i, 15 * i, 1000 + 100 * i) for i in range(12)]
    m2 = [reading("m2", i, 15 * i, 7000 + 40 * i * i) for i in range(12)]
    await feed(pipeline, [m1[0], m1[11], m2[0], m2[11]])          # two big deltas first
    await feed(pipeline, m1[3:6] + m2[7:9] + [m2[2]])                # late readings of both, one batch
    await feed(pipeline, m1[6:11] + m1[1:3] + m2[1:2] + m2[3:7] + m2[9:11])
    assert await total_kwh(pool, "m1") == Decimal("1.100")
    assert await total_kwh(pool, "m2") == Decimal(40 * 121) / 1000
    async with pool.connection() as conn:  # and every 15-minute delta is there, as if in order
        cur = await conn.execute("SELECT device_id, ts, sum(quantity) FROM usage_entries GROUP BY 1, 2 "
                                 "HAVING sum(quantity) <> 0 ORDER BY 1, 2")
        deltas = [(str(r[0]), r[2]) for r in await cur.fetchall()]
    assert deltas == [("m1", Decimal("0.100"))] * 11 + [("m2", Decimal(40 * (2 * i - 1)) / 1000) for i in range(1, 12)]


async def test_batches_straddling_the_latest_reading_split_exactly_and_read_back_only_older_readings(
        pipeline: Pipeline, pool: AsyncConnectionPool) -> None:
    """Local shuffles: each batch holds a few readings older than the latest stored and many newer ones.

    Every 15-minute delta comes out as if in order, and the late-data read returns only readings stored
    before the batch, not the batch's own newer ones read back (the cost of a batch is its overlap).
    """
    rng = random.Random(7)
    values = [5000 + 37 * i + (i * i) % 11 for i in range(60)]
    order = list(range(60))
    for w in range(0, 60, 8):  # windows of 8, shuffled inside
        window = order[w:w + 8]
        rng.shuffle(window)
        order[w:w + 8] = window
    msgs = [reading("m1", i, 15 * i, values[i]) for i in order]
    for start in range(0, 60, 10):
        await feed(pipeline, msgs[start:start + 10] + msgs[max(0, start - 3):start])  # with redeliveries
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT ts, sum(quantity) FROM usage_entries WHERE device_id = 'm1' "
                                 "GROUP BY 1 HAVING sum(quantity) <> 0 ORDER BY 1")
        deltas = [r[1] for r in await cur.fetchall()]
        assert deltas == [Decimal(values[i] - values[i - 1]) / 1000 for i in range(1, 60)]
        # The read itself: readings 0..29 stored, a batch of 25 (late) .. 40.
        batch = [Reading(ts=T0 + timedelta(minutes=15 * i), value=Decimal(values[i]) / 1000, event_id=str(i))
                 for i in (25, *range(31, 41))]
        latest = Reading(ts=T0 + timedelta(minutes=15 * 59), value=Decimal(0), event_id="59")
        got = await stored_neighbourhoods(conn, {("m1", "energy"): batch}, {("m1", "energy"): latest})
        # Each late reading's stored neighbours and the latest: not the readings between them (27-29).
        assert [r.event_id for r in got[("m1", "energy")]] == ["24", "26", "30", "41", "59"]
        capped = Reading(ts=T0 + timedelta(minutes=15 * 29), value=Decimal(0), event_id="29")
        got = await stored_neighbourhoods(conn, {("m1", "energy"): batch}, {("m1", "energy"): capped})
        # Nothing past the latest reading: the batch's readings after it follow it.
        assert [r.event_id for r in got[("m1", "energy")]] == ["24", "26", "29"]


async def test_a_reading_days_late_reads_its_neighbours_only_whatever_the_history(
        pipeline: Pipeline, pool: AsyncConnectionPool) -> None:
    """The stored readings read for a late reading are its neighbours and the latest: as many after 40 readings
    as after 600 (the read once spanned everything from the late reading to the latest)."""
    def wh(i: int) -> int:
        return 1000 + 40 * i + (i * 7) % 13

    for device, n in (("m1", 600), ("m2", 40)):
        await feed(pipeline, [reading(device, i, 15 * i, wh(i)) for i in range(n) if i != 5])  # 5 arrives late
    async with pool.connection() as conn:
        for device, n in (("m1", 600), ("m2", 40)):
            late = Reading(ts=T0 + timedelta(minutes=75), value=Decimal(wh(5)) / 1000, event_id="5")
            newer = Reading(ts=T0 + timedelta(minutes=15 * n), value=Decimal(wh(n)) / 1000, event_id=str(n))
            latest = Reading(ts=T0 + timedelta(minutes=15 * (n - 1)), value=Decimal(0), event_id=str(n - 1))
            got = await stored_neighbourhoods(conn, {(device, "energy"): [late, newer]}, {(device, "energy"): latest})
            assert [r.event_id for r in got[(device, "energy")]] == ["4", "6", str(n - 1)]
    await feed(pipeline, [reading("m1", 5, 75, wh(5)), reading("m1", 600, 15 * 600, wh(600))])
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT ts, sum(quantity) FROM usage_entries WHERE device_id = 'm1' "
                                 "GROUP BY 1 HAVING sum(quantity) <> 0 ORDER BY 1")
        deltas = [r[1] for r in await cur.fetchall()]
    assert deltas == [Decimal(wh(i) - wh(i - 1)) / 1000 for i in range(1, 601)]


async def test_offer_calls_back_once_each_only_after_its_batch_committed(pipeline: Pipeline,
                                                                         pool: AsyncConnectionPool) -> None:
    # The MQTT adapter's way in: no future per message; the callback is its PUBACK.
    msgs = [reading("m2", i, 15 * i, 1000 + 10 * i) for i in range(6)]
    junk = RawMessage(transport="mqtt", topic="meters/m2/reading", payload=b"\xff not json", received_at=NOW)
    seen: list[tuple[int, int]] = []  # (message, m2's events visible to another connection at the callback)

    def stored(i: int) -> None:
        with psycopg.connect(pool.conninfo) as conn:  # another session sees only what is committed
            row = conn.execute("SELECT count(*) FROM events WHERE device_id = 'm2'").fetchone()
        assert row is not None
        seen.append((i, int(row[0])))
        if len(seen) == 8:
            all_in.set()

    all_in = asyncio.Event()
    for i, m in enumerate([*msgs, msgs[1], junk]):  # six new, a duplicate, a quarantined message
        await pipeline.offer(m, functools.partial(stored, i))
    assert seen == []  # nothing committed yet: the pipeline has not run
    task = asyncio.create_task(pipeline.run())
    try:
        async with asyncio.timeout(20):
            await all_in.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pipeline.drain()
    assert sorted(seen) == [(i, 6) for i in range(8)]  # each once, after the commit of all six
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT count(*) FROM quarantine WHERE topic = 'meters/m2/reading'")
                     ).fetchone()
    assert row is not None and row[0] == 1


async def test_a_stop_waits_for_storage_only_so_long_and_acknowledges_nothing_uncommitted(
        pipeline: Pipeline) -> None:
    async def storage_gone(conn: object, events: object) -> None:
        raise StorageUnavailable("the database does not answer")

    pipeline.hooks.append(storage_gone)  # type: ignore[arg-type]
    acked: list[int] = []
    for i in range(3):
        await pipeline.offer(reading("m1", 100 + i, 15 * i, 10 * i), functools.partial(acked.append, i))
    started = asyncio.get_running_loop().time()
    left = await pipeline.drain(timeout_s=1.0)
    assert left == 3
    assert asyncio.get_running_loop().time() - started < 5
    assert acked == []  # never committed, never acknowledged: delivered again after the restart
