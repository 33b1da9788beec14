"""A session replay reads a segment's points through the account index, whatever the size of the table.

The hour-long soak (bench/soak.py) found the replay's points query planned as a hash join over a
sequential scan of all of session_points: each round cost more as the table grew, and the session
queue's oldest segment aged from 19 s to 90 s within 17 minutes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from psycopg_pool import AsyncConnectionPool

from usagehub.storage.marks import _POINTS_IN

T0 = datetime(2026, 11, 1, tzinfo=UTC)


async def test_points_of_segments_use_the_account_index_and_return_exactly_the_segment(
        pool: AsyncConnectionPool) -> None:
    async with pool.connection() as conn:
        # As in the soak, scaled down: 100 accounts with a point every 18 s for an hour, the replay asking for
        # the current segment of 32 of them: the planner then prefers one scan of the whole table to 32 ranges.
        await conn.execute(
            "INSERT INTO session_points (account_id, service, device_id, product, kind, aggregation, start_ts, "
            "end_ts, value) SELECT 'acc' || a, 'electricity', 'dev' || a, 'energy', 'usage', 'sum', "
            "%s + m * interval '18 seconds', %s + m * interval '18 seconds', 1 "
            "FROM generate_series(1, 100) a, generate_series(0, 199) m", (T0, T0))
        await conn.execute("ANALYZE session_points")
        accounts = [f"acc{a}" for a in range(1, 100, 3)][:32]
        start, end = T0 + timedelta(minutes=30), T0 + timedelta(hours=3, minutes=30)
        params = [list(range(len(accounts))), accounts, ["electricity"] * len(accounts),
                  [start] * len(accounts), [end] * len(accounts)]
        plan = "\n".join(r[0] for r in await (await conn.execute(b"EXPLAIN " + _POINTS_IN.encode(), params))
                         .fetchall())
        rows = await (await conn.execute(_POINTS_IN.encode(), params)).fetchall()
    assert "Seq Scan on session_points" not in plan, plan
    assert "session_points_account_time" in plan, plan
    by_walk: dict[int, list[datetime]] = {}
    for row in rows:
        # (ask, device, product, kind, aggregation, start, ...): the walk's account and service are not read back
        assert row[1] == "dev" + accounts[row[0]].removeprefix("acc") and start <= row[5] < end, row
        by_walk.setdefault(row[0], []).append(row[5])
    assert sorted(by_walk) == list(range(len(accounts)))
    assert all(len(times) == 100 for times in by_walk.values())  # the second half hour of points
