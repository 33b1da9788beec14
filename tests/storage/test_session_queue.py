"""Deferred sessions: ingest queues segments, session workers replay them; the result equals inline sessions."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from tests.conftest import _fresh_database
from tests.storage.test_sessions_billing import NOW, OCT, alarm, feed, reading, wired
from usagehub.core.events import RawMessage
from usagehub.errors import DomainError
from usagehub.pipeline import sessions as sessions_stage
from usagehub.pipeline.pipeline import Pipeline
from usagehub.pipeline.session_worker import SessionWorker
from usagehub.pipeline.sessions import SessionEngine
from usagehub.storage.pool import open_pool
from usagehub.storage.registry import Registry
from usagehub.storage.session_queue import finish

STEP = timedelta(minutes=15)


def _engine(pipeline: Pipeline) -> SessionEngine:
    engine = pipeline.hooks[1].__self__  # type: ignore[attr-defined]
    assert isinstance(engine, SessionEngine)
    return engine


def _fleet() -> list[list[RawMessage]]:
    """Two meters of two tenants and a panel: shuffled, duplicated, some a day late; in chunks."""
    rng = random.Random(21)
    msgs = [reading(dev, k, OCT + STEP * k, 250 * k + (7 if dev == "m2" else 0))
            for dev in ("m1", "m2") for k in range(1, 240)]
    msgs += [alarm("ax", f"e{k}", OCT + timedelta(hours=7 * k), "alarm") for k in range(1, 18)]
    msgs.sort(key=lambda m: m.payload)  # not in time order
    rng.shuffle(msgs)
    msgs += rng.sample(msgs, 24)  # duplicates
    late = msgs[:15]
    msgs = msgs[15:] + late
    return [msgs[i:i + 60] for i in range(0, len(msgs), 60)]


async def _seed(pool: AsyncConnectionPool) -> Registry:
    reg = Registry(pool)
    await reg.upsert_account(account_id="a1", timezone="Europe/Berlin", tenant="t1")
    await reg.upsert_account(account_id="a2", timezone="America/New_York", tenant="t2")
    for dev, profile, account in (("m1", "acme-em340", "a1"), ("ax", "acme-alarm-ax", "a1"),
                                  ("m2", "acme-em340", "a2")):
        tenant = "t1" if account == "a1" else "t2"
        await reg.upsert_device(device_id=dev, profile_id=profile, tenant=tenant)
        await reg.bind(device_id=dev, account_id=account, valid_from=OCT - timedelta(days=30), tenant=tenant)
    return reg


async def _derived(pool: AsyncConnectionPool) -> dict[str, list[Any]]:
    """Every derived row: sessions, walk marks, billing records."""
    async with pool.connection() as conn:
        out = {}
        for name, sql in (
                ("sessions", "SELECT session_id, start_ts, end_ts, closed_reason, activity_count, partials "
                             "FROM sessions ORDER BY 1"),
                ("marks", "SELECT account_id, service, seg_start, entry, piece, created FROM session_marks "
                          "ORDER BY 1, 2, 3"),
                ("records", "SELECT record_id, quantity, status, kind FROM billing_records ORDER BY 1")):
            out[name] = await (await conn.execute(sql)).fetchall()  # type: ignore[arg-type]
        return out


@pytest.fixture
async def second_pool(pg_server_url: str, template_db: str) -> AsyncIterator[AsyncConnectionPool]:
    for url in _fresh_database(pg_server_url, template_db):
        p = await open_pool(url, min_size=1, max_size=4)
        yield p
        await p.close()


async def _inline(pool: AsyncConnectionPool) -> dict[str, list[Any]]:
    await _seed(pool)
    pipeline, _ = wired(pool)
    for chunk in _fleet():
        await feed(pipeline, chunk)
    return await _derived(pool)


async def _queued(pool: AsyncConnectionPool) -> int:
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT count(*) FROM session_queue")).fetchone()
    assert row is not None
    return int(row[0])


async def _ingest_deferred(pool: AsyncConnectionPool) -> SessionEngine:
    """The fleet ingested with sessions queued (as serve does with session workers), nothing replayed yet."""
    await _seed(pool)
    pipeline, _ = wired(pool)
    engine = _engine(pipeline)
    engine.defer = True
    for chunk in _fleet():
        await feed(pipeline, chunk)
    return engine


async def test_worker_after_ingest_equals_inline(pool: AsyncConnectionPool, second_pool: AsyncConnectionPool) -> None:
    expected = await _inline(second_pool)
    engine = await _ingest_deferred(pool)
    assert engine.points_read == 0  # nothing replayed on the ingest path
    assert await _queued(pool) > 0
    assert (await _derived(pool))["records"] == []  # nothing billed before a worker ran
    worker = SessionWorker(pool, SessionEngine(engine.profiles, clock=lambda: NOW), accounts_per_round=1)
    assert await worker.drain() == worker.replayed > 0
    assert await _queued(pool) == 0
    assert await _derived(pool) == expected


@pytest.mark.parametrize("count", [1, 2])  # 2: serve's default on 2 cores, both sharing one queue
async def test_workers_beside_ingest_equal_inline(count: int, pool: AsyncConnectionPool,
                                                  second_pool: AsyncConnectionPool) -> None:
    expected = await _inline(second_pool)
    await _seed(pool)
    pipeline, _ = wired(pool)
    _engine(pipeline).defer = True
    profiles = _engine(pipeline).profiles
    workers = [SessionWorker(pool, SessionEngine(profiles, clock=lambda: NOW), idle_s=0.005, coalesce_s=0.02)
               for _ in range(count)]
    running = [asyncio.create_task(w.run()) for w in workers]
    try:
        for chunk in _fleet():
            await feed(pipeline, chunk)
            await asyncio.sleep(0.03)  # let rounds interleave with batches (and with each other's)
    finally:
        for task in running:
            task.cancel()
        ended = await asyncio.gather(*running, return_exceptions=True)
    assert all(isinstance(e, asyncio.CancelledError) for e in ended), ended  # no worker died on the other
    for w in workers:
        await w.drain()
    assert await _queued(pool) == 0
    assert sum(w.replayed for w in workers) > 0
    assert await _derived(pool) == expected


async def test_an_idle_worker_polls_seldom_and_still_takes_a_new_row_promptly(pool: AsyncConnectionPool) -> None:
    await _seed(pool)
    pipeline, _ = wired(pool)
    _engine(pipeline).defer = True
    worker = SessionWorker(pool, SessionEngine(_engine(pipeline).profiles, clock=lambda: NOW), idle_s=0.01,
                           quiet_s=0.2)
    rounds = 0
    real_round = worker.round

    async def counted(**kwargs: Any) -> int:
        nonlocal rounds
        rounds += 1
        return await real_round(**kwargs)

    worker.round = counted  # type: ignore[method-assign]
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(1.0)
        assert 1 <= rounds <= 12, rounds  # backing off to quiet_s; every idle_s would be ~100 rounds a second
        await feed(pipeline, [reading("m1", k, OCT + STEP * k, 250 * k) for k in (1, 2)])
        for _ in range(250):
            if worker.replayed:
                break
            await asyncio.sleep(0.02)
        assert worker.replayed > 0  # claimed once quiet_s old, within one backed-off wait
        assert await _queued(pool) == 0
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_failed_round_keeps_its_queue_and_writes_nothing(pool: AsyncConnectionPool,
                                                               second_pool: AsyncConnectionPool) -> None:
    expected = await _inline(second_pool)
    await _seed(pool)
    pipeline, _ = wired(pool)
    engine = _engine(pipeline)
    engine.defer = True
    for chunk in _fleet():
        await feed(pipeline, chunk)
    queued = await _queued(pool)
    replayer = SessionEngine(engine.profiles, clock=lambda: NOW)
    with pytest.raises(RuntimeError):
        async with pool.connection() as conn, conn.transaction():
            assert await replayer.replay_queued(conn, limit=None) == queued
            raise RuntimeError("the worker died before COMMIT")
    assert await _queued(pool) == queued
    assert await _derived(pool) == {"sessions": [], "marks": [], "records": []}
    await SessionWorker(pool, replayer).drain()
    assert await _derived(pool) == expected


async def test_billing_run_replays_its_tenants_queue_first(pool: AsyncConnectionPool) -> None:
    await _seed(pool)
    pipeline, billing = wired(pool)
    _engine(pipeline).defer = True
    await feed(pipeline, [reading("m1", 1, OCT + timedelta(hours=5), 0),
                          reading("m1", 2, OCT + timedelta(days=3), 700),
                          reading("m2", 1, OCT + timedelta(hours=5), 0),
                          reading("m2", 2, OCT + timedelta(days=3), 900)])
    # Another tenant cannot bill (or replay) a1.
    with pytest.raises(DomainError):
        await billing.run(tenant="t2", period="2026-10", account_id="a1", author="intruder")
    billed = await billing.run(tenant="t1", period="2026-10", account_id="a1", author="k")
    assert [(r.record_id, r.quantity) for r in billed] == [("a1/2026-10/energy", Decimal("0.7"))]
    async with pool.connection() as conn:
        rows = await (await conn.execute("SELECT DISTINCT account_id FROM session_queue")).fetchall()
    assert rows == [("a2",)]  # t2's account is still queued: t1's run did not touch it


async def test_ingest_never_waits_for_a_round_and_a_point_stored_during_it_is_replayed_later(
        pool: AsyncConnectionPool, second_pool: AsyncConnectionPool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A round has claimed, locked its accounts and replayed; a batch for the same segments commits before
    the round deletes its claims.

    The batch must not wait for the round (ingest is never stalled by session work), and its points, which
    the round read too early to see, must be replayed by a later round: the result equals inline.
    """
    chunks = _fleet()
    expected = await _inline(second_pool)
    await _seed(pool)
    pipeline, _ = wired(pool)
    engine = _engine(pipeline)
    engine.defer = True
    for chunk in chunks[:-1]:
        await feed(pipeline, chunk)
    claimed: list[int] = []

    async def finish_after_a_batch(conn: Any, ids: list[int]) -> None:
        claimed.extend(ids)
        # The last batch touches the claimed segments of both tenants' accounts, whose locks this round holds.
        await asyncio.wait_for(feed(pipeline, chunks[-1]), timeout=30)
        await finish(conn, ids)

    monkeypatch.setattr(sessions_stage, "finish", finish_after_a_batch)
    replayer = SessionEngine(engine.profiles, clock=lambda: NOW)
    async with pool.connection() as conn, conn.transaction():
        assert await replayer.replay_queued(conn, limit=None) > 0
    assert replayer.last_claimed == 2 and claimed
    monkeypatch.undo()
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM session_queue WHERE queue_id = ANY(%s)", (claimed,))
        assert (await cur.fetchone()) == (0,)  # the claimed rows are gone
    assert await _queued(pool) > 0  # the last batch's rows are not: they wait for the next round
    await SessionWorker(pool, replayer).drain()
    assert await _derived(pool) == expected
