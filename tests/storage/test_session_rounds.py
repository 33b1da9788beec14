"""Session rounds bounded by work: a round claims the earliest rows, stops at its budget, and leaves the rest."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

from tests.storage.test_session_queue import NOW, _derived, _ingest_deferred, _inline, _queued, second_pool
from usagehub.pipeline.session_worker import SessionWorker
from usagehub.pipeline.sessions import SessionEngine
from usagehub.storage.session_queue import claim

__all__ = ["second_pool"]  # the fixture, used by name



async def test_a_claim_takes_the_earliest_rows_of_an_account(pool: AsyncConnectionPool) -> None:
    await _ingest_deferred(pool)
    async with pool.connection() as conn, conn.transaction():
        rows = await claim(conn, limit=1, max_rows=3)
        account = rows[0][0]
        cur = await conn.execute("SELECT seg_start FROM session_queue WHERE account_id = %s ORDER BY 1 LIMIT 3",
                                 (account,))
        earliest = [r[0] for r in await cur.fetchall()]
    assert len(rows) == 3 and {a for a, _, _ in rows} == {account}
    assert sorted(t for _, _, t in rows) == earliest


async def test_bounded_rounds_leave_the_rest_queued_and_end_exact(pool: AsyncConnectionPool,
                                                                  second_pool: AsyncConnectionPool) -> None:
    expected = await _inline(second_pool)
    engine = await _ingest_deferred(pool)
    queued = await _queued(pool)
    replayer = SessionEngine(engine.profiles, clock=lambda: NOW)
    worker = SessionWorker(pool, replayer, rows_per_round=4, budget_per_round=60)
    assert await worker.round() <= 4
    assert replayer.points_read <= 60 + 200  # the budget, plus the segment (or chunk) where it ran out
    assert await _queued(pool) > 0
    rounds = 1
    while await worker.round():
        rounds += 1
        assert replayer.last_left or rounds < 10_000
    assert await _queued(pool) == 0
    assert rounds > queued // 4  # the bound held: many small rounds, not one
    assert await _derived(pool) == expected  # and they bill exactly what inline sessions do
