"""Session marks in PostgreSQL: a late reading replays a few segments, and records stay exact."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from psycopg_pool import AsyncConnectionPool

from tests.storage.test_sessions_billing import OCT, feed, reading, records, registry, wired
from usagehub.pipeline.rebuild import rebuild_unmarked
from usagehub.pipeline.sessions import SessionEngine
from usagehub.storage.registry import Registry

__all__ = ["registry"]  # the fixture, shared


def _engine(pipeline: object) -> SessionEngine:
    hook = pipeline.hooks[1]  # type: ignore[attr-defined]
    engine = hook.__self__
    assert isinstance(engine, SessionEngine)
    return engine


async def test_late_reading_replays_a_few_segments_whatever_the_history(pool: AsyncConnectionPool,
                                                                       registry: Registry) -> None:
    pipeline, _ = wired(pool)
    engine = _engine(pipeline)
    step = timedelta(minutes=15)
    # Ten days of one meter (even seqs), in order, one day per feed: one open session all along.
    days = 10
    for day in range(days):
        await feed(pipeline, [reading("m1", 2 * k, OCT + 2 * step * k, 1000 * k)
                              for k in range(day * 48, (day + 1) * 48)])
    before = engine.points_read
    # One reading three days late, between two stored ones: it splits a stored delta.
    k = (days - 3) * 48 + 5
    await feed(pipeline, [reading("m1", 2 * k + 1, OCT + 2 * step * k + step, 1000 * k + 300)])
    late_cost = engine.points_read - before
    # the late segment, the next (where the walk converges) and the last (finish), 3 h of points each
    assert late_cost <= 3 * 3 * 6 + 6, late_cost
    got = await records(pool, "a1")
    total = sum(q for q, _, kind, _ in got.values() if kind == "regular")
    assert total == Decimal(1000 * (days * 48 - 1)) / 1000  # kWh: every delta once, the split one too
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM sessions WHERE account_id = 'a1'")
        row = await cur.fetchone()
        assert row is not None and row[0] == 1  # still one session
    # A reading of another tenant's account does not touch a1's marks or records.
    await registry.bind(device_id="m2", account_id="a2", valid_from=OCT - timedelta(days=1))
    await feed(pipeline, [reading("m2", 1, OCT + step, 5), reading("m2", 2, OCT + 2 * step, 9000)])
    assert await records(pool, "a1") == got
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT account_id, count(*) FROM session_marks GROUP BY 1 ORDER BY 1")
        assert [(r[0], r[1]) for r in await cur.fetchall()] == [("a1", days * 8), ("a2", 1)]


async def _state_bytes(pool: AsyncConnectionPool, account: str) -> tuple[int, int]:
    """Bytes of the account's latest walk mark and of its open session's partials, as stored."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT (SELECT octet_length(entry::text) + coalesce(octet_length(piece::text), 0) FROM session_marks "
            "        WHERE account_id = %s ORDER BY seg_start DESC LIMIT 1), "
            "       (SELECT octet_length(partials::text) FROM sessions WHERE account_id = %s "
            "        ORDER BY start_ts DESC LIMIT 1)", (account, account))
        row = await cur.fetchone()
    assert row is not None and row[0] is not None and row[1] is not None
    return int(row[0]), int(row[1])


async def test_the_walk_state_stored_per_reading_does_not_grow_with_the_open_session(
        pool: AsyncConnectionPool, registry: Registry) -> None:
    pipeline, _ = wired(pool)
    step = timedelta(minutes=30)
    await registry.bind(device_id="m2", account_id="a2", valid_from=OCT - timedelta(days=1))
    # Distinct deltas every reading (a real meter's), one open session for ten days; a2 gets one day only.
    wh = 0
    for day in range(10):
        batch = []
        for k in range(day * 48, (day + 1) * 48):
            wh += 100 + k % 97
            batch.append(reading("m1", k, OCT + step * k, wh))
        await feed(pipeline, batch)
        if day == 0:
            first = await _state_bytes(pool, "a1")
            await feed(pipeline, [reading("m2", k, OCT + step * k, 7 * k) for k in range(48)])
    last = await _state_bytes(pool, "a1")
    # A sum needs no distinct values: the mark and the session's partials hold counters, not a month of values.
    assert last[0] <= first[0] + 64 and last[1] <= first[1] + 64, (first, last)
    assert await _state_bytes(pool, "a2") != last  # the other tenant's account has its own state


async def test_sessions_stored_before_marks_are_rebuilt_exactly_once(pool: AsyncConnectionPool,
                                                                     registry: Registry) -> None:
    pipeline, _ = wired(pool)
    engine = _engine(pipeline)
    step = timedelta(minutes=15)
    await feed(pipeline, [reading("m1", k, OCT + step * k, 1000 * k) for k in range(0, 200)])
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT session_id, start_ts, end_ts, partials FROM sessions ORDER BY 1")
        sessions = await cur.fetchall()
    expected = await records(pool, "a1")
    # A database from before marks: sessions and records, no marks (and a stale extra session row).
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM session_marks")
        await conn.execute("INSERT INTO sessions SELECT 'stale-' || session_id, account_id, service, period_start, "
                           "period_end, period_label, start_ts, end_ts, closed_reason, activity_count, devices, "
                           "partials, resume, resume_ts, expires_at, computed_at, carry FROM sessions")
    assert await rebuild_unmarked(engine, pool) == 1
    assert await rebuild_unmarked(engine, pool) == 0  # once
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT session_id, start_ts, end_ts, partials FROM sessions ORDER BY 1")
        assert await cur.fetchall() == sessions
    assert await records(pool, "a1") == expected
    # A late reading after the rebuild replays a few segments, not the history.
    before = engine.points_read
    await feed(pipeline, [reading("m1", 1000, OCT + step * 100 + step / 2, 1000 * 100 + 300)])
    assert engine.points_read - before <= 3 * 3 * 12
    assert await records(pool, "a1") == expected  # a split delta: same total
