"""Migration 0034: walk marks stored as jsonb before it read back equal, and marks are written as text since."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from zoneinfo import ZoneInfo

import orjson

from tests.storage.migrate_before import migrate_before
from tests.storage.test_event_meta import empty_database_url  # noqa: F401  (fixture)
from usagehub.core.allocation import Point, PointKind
from usagehub.core.events import Aggregation
from usagehub.core.segments import EMPTY, Mark, MarkBefore, MarksAfter, Outcome, step
from usagehub.core.sessions import SessionRules
from usagehub.storage.marks import StoredForms, acc_json, answer, entry_json, mark_of, mark_texts, save_walks
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import open_pool
from usagehub.storage.sessions import resume_json

T0 = datetime(2026, 10, 1, tzinfo=UTC)
RULES = SessionRules(idle_timeout=timedelta(hours=1), zone=ZoneInfo("Europe/Berlin"))


def marks_of(account: str) -> list[Mark]:
    """Marks of a real walk: a meter every 15 minutes and a panel armed and disarmed, chunks of 8 points."""
    points = [Point(account_id=account, service="s", device_id=f"{account}-m", product="energy",
                    kind=PointKind.USAGE, aggregation=Aggregation.SUM, start=T0 + timedelta(minutes=15 * k),
                    end=T0 + timedelta(minutes=15 * k + 15), value=Decimal("0.250")) for k in range(40)]
    points += [Point(account_id=account, service="s", device_id=f"{account}-p", product="armed",
                     kind=PointKind.STATE, aggregation=Aggregation.SUM, start=T0 + timedelta(minutes=40 * j),
                     end=T0 + timedelta(minutes=40 * j), value=Decimal(1), active=j % 2 == 0, tie=f"x{j}")
               for j in range(10)]
    return step(T0, EMPTY, points, account_id=account, service="s", rules=RULES, chunk=8).marks


async def test_marks_stored_as_jsonb_read_back_equal_after_0034_and_new_ones_round_trip(
        empty_database_url: str) -> None:  # noqa: F811
    pool = await open_pool(empty_database_url, min_size=1, max_size=2)
    old, new = marks_of("t1-acc"), marks_of("t2-acc")
    try:
        async with pool.connection() as conn:  # the database as the release before 0034 left it
            await migrate_before(conn, "0034")
            for m in old:
                await conn.execute(
                    "INSERT INTO session_marks (account_id, service, seg_start, entry, piece, created, points) "
                    "VALUES ('t1-acc', 's', %s, %s::jsonb, %s::jsonb, %s::jsonb, %s)",
                    (m.start, orjson.dumps(entry_json(m.entry)).decode(),
                     None if m.piece is None else orjson.dumps(acc_json(m.piece)).decode(),
                     orjson.dumps([resume_json(r) for r in m.created]).decode(), m.points))
        assert "0034_session_marks_text" in await migrate(pool)
        async with pool.connection() as conn, conn.transaction():
            await save_walks(conn, [(("t2-acc", "s"), Outcome(marks=new))])
        async with pool.connection() as conn:
            first = T0 - timedelta(days=1)
            got = await answer(conn, [(("t1-acc", "s"), MarksAfter(first, 100)),
                                      (("t2-acc", "s"), MarksAfter(first, 100)),
                                      (("t1-acc", "s"), MarkBefore(old[-1].start))])
            kinds = await (await conn.execute(
                "SELECT DISTINCT data_type FROM information_schema.columns WHERE table_name = 'session_marks' "
                "AND column_name IN ('entry', 'piece', 'created')")).fetchall()
        assert len(old) > 3 and any(m.piece is None for m in old) and any(m.created for m in old)
        assert got == [old, new, old[-1]]
        assert kinds == [("text",)]
    finally:
        await pool.close()


def test_marks_written_back_from_their_stored_forms_are_the_texts_made_from_scratch() -> None:
    """A replay reuses the stored JSON of what it read (``StoredForms``); what it writes must not differ.

    The walk's moved mark holds its own piece and creations and the next mark's open shape and states with a
    new prefix; a mark with no states and no creations (two empty tuples, one object) must not mix them up.
    """
    stored = marks_of("t3-acc")
    rows = [(m.start, *mark_texts(m), m.points) for m in stored]
    forms = StoredForms()
    read = [mark_of(row, forms) for row in rows]
    assert read == stored
    assert any(not m.entry.active and not m.created for m in read)  # the empty tuples, both kinds
    for m, row in zip(read, rows, strict=True):
        assert mark_texts(m, forms) == row[1:4]  # written back as read
    for m, after in pairwise(read):
        if m.piece is None or after.entry.open is None:
            continue
        moved = replace(m, entry=replace(after.entry, prefix=m.entry.prefix.merge(m.piece)))
        assert mark_texts(moved, forms) == mark_texts(moved)  # parts reused, prefix made
        fresh = replace(moved, piece=replace(m.piece, count=m.piece.count + 1), created=())
        assert mark_texts(fresh, forms) == mark_texts(fresh)  # equal values that are other objects: made again
