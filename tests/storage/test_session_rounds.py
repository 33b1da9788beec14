"""Session rounds bounded by work: a round claims whole segments, stops at its budget, and leaves the rest."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from psycopg_pool import AsyncConnectionPool

from tests.storage.test_session_queue import (
    NOW,
    _derived,
    _engine,
    _ingest_deferred,
    _inline,
    _queued,
    _seed,
    second_pool,
)
from tests.storage.test_sessions_billing import OCT, feed, reading, wired
from usagehub.core.segments import segment_start
from usagehub.pipeline.session_worker import SessionWorker
from usagehub.pipeline.sessions import SessionEngine
from usagehub.storage.session_queue import claim
from usagehub.storage.sessions import lock_accounts

__all__ = ["second_pool"]  # the fixture, used by name


async def _queued_segments(pool: AsyncConnectionPool) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT account_id, service, seg_start FROM session_queue")
        return len({(a, s, segment_start(t)) for a, s, t in await cur.fetchall()})
async def test_a_claim_takes_every_row_of_the_earliest_segments_of_an_account(pool: AsyncConnectionPool) -> None:
    await _ingest_deferred(pool)
    async with pool.connection() as conn, conn.transaction():
        rows, _ = await claim(conn, limit=1, max_segments=3)
        account = rows[0][0]
        cur = await conn.execute("SELECT service, seg_start FROM session_queue WHERE account_id = %s", (account,))
        queued = [(str(s), t) for s, t in await cur.fetchall()]
    segments = sorted({(segment_start(t), s) for s, t in queued})[:3]
    assert {a for a, _, _ in rows} == {account}
    assert sorted((s, t) for _, s, t in rows) == sorted((s, t) for s, t in queued if (segment_start(t), s) in segments)


async def test_bounded_rounds_leave_the_rest_queued_and_end_exact(pool: AsyncConnectionPool,
                                                                  second_pool: AsyncConnectionPool) -> None:
    expected = await _inline(second_pool)
    engine = await _ingest_deferred(pool)
    segments = await _queued_segments(pool)
    replayer = SessionEngine(engine.profiles, clock=lambda: NOW)
    worker = SessionWorker(pool, replayer, segments_per_round=4, budget_per_round=60)
    assert await worker.round() > 0 and replayer.last_segments <= 4
    assert replayer.points_read <= 60 + 200  # the budget, plus the segment (or chunk) where it ran out
    assert await _queued(pool) > 0
    rounds = 1
    while await worker.round():
        rounds += 1
        assert replayer.last_left or rounds < 10_000
    assert await _queued(pool) == 0
    assert rounds > segments // 4  # the bound held: many small rounds, not one
    assert await _derived(pool) == expected  # and they bill exactly what inline sessions do


async def test_a_segment_queued_by_many_batches_is_replayed_in_one_round(pool: AsyncConnectionPool,
                                                                         second_pool: AsyncConnectionPool) -> None:
    # One meter, one 3-hour segment, one batch per reading: a queue row per batch (each its own earliest instant).
    messages = [[reading("m1", k, OCT + timedelta(minutes=5 * k), 100 * k)] for k in range(30, 0, -1)]
    await _seed(second_pool)
    inline, _ = wired(second_pool)
    for batch in messages:
        await feed(inline, batch)
    await _seed(pool)
    pipeline, _ = wired(pool)
    _engine(pipeline).defer = True
    for batch in messages:
        await feed(pipeline, batch)
    assert await _queued(pool) >= 25 and await _queued_segments(pool) == 1
    worker = SessionWorker(pool, SessionEngine(_engine(pipeline).profiles, clock=lambda: NOW), segments_per_round=1)
    rounds = 0
    while await worker.round():
        rounds += 1
    assert rounds == 1  # rows of one segment are one replay, not a round each
    assert await _queued(pool) == 0
    assert await _derived(pool) == await _derived(second_pool)


async def test_rounds_longer_than_their_target_shrink_and_still_end_exact(pool: AsyncConnectionPool,
                                                                          second_pool: AsyncConnectionPool) -> None:
    expected = await _inline(second_pool)
    engine = await _ingest_deferred(pool)
    replayer = SessionEngine(engine.profiles, clock=lambda: NOW)
    worker = SessionWorker(pool, replayer, segments_per_round=64, budget_per_round=4_000, target_round_s=1e-6)
    assert worker.bounds() == (64, 4_000)
    assert await worker.round() > 0
    segments, budget = worker.bounds()
    assert segments is not None and budget is not None and segments < 64 and budget < 4_000  # every round overran
    while await worker.round():
        assert replayer.last_segments <= max(1, segments)
        segments = worker.bounds()[0] or 0
    assert worker.bounds() == (1, 40)  # down to a hundredth, not to nothing
    assert await _derived(pool) == expected
    relaxed = SessionWorker(pool, replayer, segments_per_round=64, budget_per_round=4_000, target_round_s=60.0)
    relaxed.scale = 0.5
    await relaxed.round()  # quick (the queue is empty): the bounds grow back
    assert relaxed.scale > 0.5


async def test_a_worker_lets_young_rows_gather_and_drain_takes_them_all(pool: AsyncConnectionPool) -> None:
    """A round of a running worker passes over accounts whose oldest row is younger than ``min_age_s`` (the
    batches of that time then share one replay); a drain (shutdown, tests) and a billing run do not wait."""
    engine = await _ingest_deferred(pool)
    async with pool.connection() as conn, conn.transaction():
        rows, ids = await claim(conn, limit=None, min_age_s=3600)
        assert rows == [] and ids == []
    async with pool.connection() as conn, conn.transaction():
        rows, _ = await claim(conn, limit=None, min_age_s=0)
        assert {a for a, _, _ in rows} == {"a1", "a2"}
    worker = SessionWorker(pool, SessionEngine(engine.profiles, clock=lambda: NOW), coalesce_s=3600)
    assert await worker.round(min_age_s=worker.coalesce_s) == 0
    assert await worker.drain() > 0
    assert await _queued(pool) == 0


async def test_a_claim_picks_the_longest_waiting_accounts_and_only_those_asked_for(pool: AsyncConnectionPool) -> None:
    # Queue rows of accounts of two tenants (the queue holds ids only): t2's account waits longest.
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO session_queue (account_id, service, seg_start, queued_at) VALUES "
            "('t1-a', 'power', %(t)s, now() - interval '5 s'), ('t1-a', 'power', %(t)s, now() - interval '1 s'), "
            "('t1-b', 'power', %(t)s, now() - interval '3 s'), ('t2-a', 'power', %(t)s, now() - interval '9 s'), "
            "('t2-b', 'power', %(t)s, now())", {"t": OCT})
    async with pool.connection() as conn, conn.transaction():
        rows, ids = await claim(conn, limit=2, min_age_s=2)
        assert sorted({a for a, _, _ in rows}) == ["t1-a", "t2-a"] and len(ids) == 3  # every row of each
    async with pool.connection() as conn, conn.transaction():
        rows, _ = await claim(conn, limit=None, min_age_s=2)
        assert sorted({a for a, _, _ in rows}) == ["t1-a", "t1-b", "t2-a"]  # t2-b is younger than 2 s
    async with pool.connection() as conn, conn.transaction():  # a billing run of tenant t1's accounts
        rows, _ = await claim(conn, limit=None, accounts=["t1-b", "t1-a", "t1-c"], skip_locked=False)
        assert sorted({a for a, _, _ in rows}) == ["t1-a", "t1-b"]


async def test_a_claim_takes_young_accounts_at_once_when_nothing_came_since(pool: AsyncConnectionPool) -> None:
    # Every row is at least 2 s old (ingest paused or ended): waiting gathers nothing more, so with quiet_s 1 s
    # the young account is claimed too; a row of another account just now (ingest goes on) keeps it waiting.
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO session_queue (account_id, service, seg_start, queued_at) VALUES "
            "('t1-a', 'power', %(t)s, now() - interval '3 s'), ('t1-a', 'power', %(t)s, now() - interval '2 s'), "
            "('t2-a', 'power', %(t)s, now() - interval '9 s')", {"t": OCT})
    for quiet, expected in ((None, ["t2-a"]), (1.0, ["t1-a", "t2-a"]), (60.0, ["t2-a"])):
        async with pool.connection() as conn, conn.transaction():
            rows, _ = await claim(conn, limit=None, min_age_s=5, quiet_s=quiet)
            assert sorted({a for a, _, _ in rows}) == expected, quiet
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO session_queue (account_id, service, seg_start) VALUES ('t1-b', 'power', %s)",
                           (OCT,))
    async with pool.connection() as conn, conn.transaction():
        rows, _ = await claim(conn, limit=None, min_age_s=5, quiet_s=1.0)
        assert sorted({a for a, _, _ in rows}) == ["t2-a"]


async def _advisory_locks(conn: Any) -> int:
    cur = await conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()")
    row = await cur.fetchone()
    return int(row[0])


async def test_a_round_passes_over_an_account_another_holds_and_locks_only_what_it_claims(
        pool: AsyncConnectionPool, second_pool: AsyncConnectionPool) -> None:
    """Two workers share the queue: one must not claim the newer rows of an account the other is replaying and
    then wait for its lock (the two would take turns, each replaying what gathered during the other's round)."""
    expected = await _inline(second_pool)
    engine = await _ingest_deferred(pool)  # a1 (tenant t1) and a2 (tenant t2) queued
    async with pool.connection() as conn, conn.transaction():  # limit 1: one account claimed, one lock taken
        rows, _ = await claim(conn, limit=1)
        assert len({a for a, _, _ in rows}) == 1 and await _advisory_locks(conn) == 1
    replayer = SessionEngine(engine.profiles, clock=lambda: NOW)
    async with pool.connection() as held, held.transaction():
        await lock_accounts(held, ["a1"])  # another round (or a correction) holds a1
        async with pool.connection() as conn, conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = '2s'")  # waiting for a1 would fail the round here
            assert await replayer.replay_queued(conn, limit=None) > 0
            assert replayer.last_claimed == 1 and await _advisory_locks(conn) == 1  # a2's
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT DISTINCT account_id FROM session_queue")
            assert await cur.fetchall() == [("a1",)]  # passed over, still queued
    await SessionWorker(pool, replayer).drain()  # a1 is free now
    assert await _queued(pool) == 0
    assert await _derived(pool) == expected


async def test_a_drain_waits_for_an_account_another_holds(pool: AsyncConnectionPool,
                                                          second_pool: AsyncConnectionPool) -> None:
    """A drain (tests, benches, after workers were stopped) empties the queue: where a running worker's round
    passes over a held account, a drain waits for it (a cancelled round's backend may hold it a moment longer)."""
    expected = await _inline(second_pool)
    engine = await _ingest_deferred(pool)
    worker = SessionWorker(pool, SessionEngine(engine.profiles, clock=lambda: NOW))
    async with pool.connection() as held:
        async with held.transaction():
            await lock_accounts(held, ["a1"])
            draining = asyncio.create_task(worker.drain())
            await asyncio.sleep(0.5)
            assert not draining.done()  # waiting for a1, not returning with a1 still queued
        assert await asyncio.wait_for(draining, timeout=30) > 0
    assert await _queued(pool) == 0
    assert await _derived(pool) == expected
