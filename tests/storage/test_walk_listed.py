"""Stale sessions in SQL: a session stays while a stored mark of its own account lists it as created.

The walk's marks and sessions live in PostgreSQL (``storage.marks``: ``answer`` and ``save_walks``); the
points come from a list, so the cases of the core properties run here as they are.
"""

from __future__ import annotations

import random
from collections.abc import Generator
from datetime import datetime
from typing import Any

from msgspec.structs import replace
from psycopg_pool import AsyncConnectionPool

from tests.core.test_segment_chunks import _LOST_AT_THE_PERIOD_START
from tests.core.test_segments import SMALL
from tests.core.test_sessions import AS_OF, BERLIN_RULES
from usagehub.core.allocation import Point
from usagehub.core.segments import Outcome, PointsIn, rewalk, settle_outcome
from usagehub.core.sessions import Session, sessionize
from usagehub.storage.marks import answer, save_walks
from usagehub.storage.sessions import sessions_from

FAR_PAST = datetime(2000, 1, 1, tzinfo=AS_OF.tzinfo)


class SqlWalks:
    """One account's walks with marks and sessions in PostgreSQL, cut by a budget as the worker cuts them."""

    def __init__(self, pool: AsyncConnectionPool, account: str, budget: int | None) -> None:
        self.pool, self.account, self.budget = pool, account, budget
        self.points: list[Point] = []

    async def walk(self, changed: list[datetime]) -> None:
        pending = changed
        while True:
            async with self.pool.connection() as conn, conn.transaction():
                gen = rewalk(account_id=self.account, service="power", rules=BERLIN_RULES, as_of=AS_OF,
                             changed=pending, segment=SMALL, chunk=1, budget=self.budget)
                out = await self._run(conn, gen)
                await save_walks(conn, [((self.account, "power"), out)])
            if not out.pending:
                return
            pending = out.pending

    async def _run(self, conn: Any, gen: Generator[Any, Any, Outcome]) -> Outcome:
        ans: Any = None
        try:
            while True:
                req = gen.send(ans)
                if isinstance(req, PointsIn):
                    ans = [p for p in self.points if req.start <= p.start < req.end]
                else:
                    ans = (await answer(conn, [((self.account, "power"), req)]))[0]
        except StopIteration as stop:
            return settle_outcome(stop.value)

    async def stored(self) -> list[Session]:
        async with self.pool.connection() as conn:
            return await sessions_from(conn, self.account, "power", FAR_PAST)


def _as(account: str, points: list[Point]) -> list[Point]:
    return [replace(p, account_id=account) for p in points]


async def _taken_away_then_backlog(walks: SqlWalks, points: list[Point], seed: int) -> list[Point]:
    """The core case: some points walked, the rest queued, 30 % taken away and walked, then the queue."""
    rng = random.Random(seed)
    cut = rng.randint(0, len(points))
    walks.points = points[:cut]
    await walks.walk([p.start for p in points[:cut]])
    walks.points += points[cut:]
    gone = [p for p in points if rng.random() < 0.3]
    walks.points = [p for p in walks.points if p not in gone]
    await walks.walk([p.start for p in gone])
    await walks.walk([p.start for p in points[cut:]])
    return [p for p in points if p not in gone]


async def test_a_budgeted_walk_in_sql_keeps_the_session_another_stored_mark_lists(
        pool: AsyncConnectionPool) -> None:
    """The case the core property found: round 2 replays a stored mark that still lists a session round 1
    re-created in an earlier mark; ``Listed`` answered from ``session_marks`` keeps it."""
    walks = SqlWalks(pool, "t1-acc", budget=1)
    kept = await _taken_away_then_backlog(walks, _as("t1-acc", _LOST_AT_THE_PERIOD_START), 92587350)
    assert await walks.stored() == sessionize(kept, account_id="t1-acc", service="power", rules=BERLIN_RULES,
                                              as_of=AS_OF)


async def test_a_mark_of_another_account_listing_the_same_session_does_not_keep_it(
        pool: AsyncConnectionPool) -> None:
    """Two tenants' accounts with the same points (so the same resume keys): points taken away from one
    delete its sessions even though the other's marks list identical resumes; the other's stay whole."""
    points = _as("t1-acc", _LOST_AT_THE_PERIOD_START)
    mine, theirs = SqlWalks(pool, "t1-acc", budget=None), SqlWalks(pool, "t2-acc", budget=None)
    for walks in (mine, theirs):
        walks.points = _as(walks.account, points)
        await walks.walk([p.start for p in walks.points])
    before, mine_before = await theirs.stored(), await mine.stored()
    gone = mine.points[::2]
    mine.points = [p for p in mine.points if p not in gone]
    await mine.walk([p.start for p in gone])
    after = await mine.stored()
    assert after == sessionize(mine.points, account_id="t1-acc", service="power", rules=BERLIN_RULES, as_of=AS_OF)
    assert {s.resume for s in mine_before} - {s.resume for s in after}  # sessions were deleted: not vacuous
    assert await theirs.stored() == before == sessionize(theirs.points, account_id="t2-acc", service="power",
                                                         rules=BERLIN_RULES, as_of=AS_OF)
