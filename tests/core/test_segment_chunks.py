"""Segments cut into chunks and walks cut by a budget: still equal to a full replay, and bounded work."""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.test_segments import SMALL, MemoryStore, assert_arrivals_equal_sessionize
from tests.core.test_sessions import (
    AS_OF,
    BERLIN,
    BERLIN_RULES,
    BOUNDARY,
    HOUR,
    gauge,
    point_sets,
    state,
    usage,
)
from usagehub.core.allocation import Point
from usagehub.core.segments import CHUNK, SEGMENT, TAIL, Outcome, rewalk
from usagehub.core.sessions import SessionRules, sessionize


class ChunkedStore(MemoryStore):
    """The in-memory store, walking with a chunk size and a budget (walks cut by it are continued)."""

    def __init__(self, segment: timedelta, chunk: int | None, budget: int | None = None,
                 rules: SessionRules = BERLIN_RULES) -> None:
        super().__init__(segment, rules)
        self.chunk, self.budget = chunk, budget
        self.rounds = 0

    def walk(self, changed: list[datetime], as_of: datetime) -> Outcome:
        pending: Iterable[datetime] = changed
        total = Outcome()
        while True:
            out = self.run(rewalk(account_id="acc", service="power", rules=self.rules, as_of=as_of,
                                  changed=pending, segment=self.segment, chunk=self.chunk, budget=self.budget))
            self.rounds += 1
            for start in out.dropped:
                del self.marks[start]
            self.marks.update({m.start: m for m in out.marks})
            for resume in out.stale:
                self.sessions.pop(resume, None)
            self.sessions.update({s.resume: s for s in out.sessions})
            total.points_read += out.points_read
            total.marks_moved += out.marks_moved
            total.sessions += out.sessions
            if not out.pending:
                return total
            pending = out.pending


@settings(max_examples=200, deadline=None)
@given(points=point_sets(), seed=st.integers(0, 2**32), segment=st.sampled_from([SMALL, HOUR, 3 * HOUR]),
       chunk=st.sampled_from([1, 2, 3, 5]), budget=st.sampled_from([None, 1, 2, 4, 9]))
def test_chunked_and_budgeted_walk_equals_replay_whatever_the_batches(points: list[Point], seed: int,
                                                                     segment: timedelta, chunk: int,
                                                                     budget: int | None) -> None:
    """Shuffled, duplicated, retracted points in random batches; tiny chunks; walks cut short == sessionize."""
    assert_arrivals_equal_sessionize(ChunkedStore(segment, chunk, budget), points, seed)


@settings(max_examples=100, deadline=None)
@given(points=point_sets(), seed=st.integers(0, 2**32), chunk=st.sampled_from([1, 2, 4]),
       budget=st.sampled_from([None, 1, 3]))
def test_chunked_walk_after_points_are_taken_away_and_a_backlog(points: list[Point], seed: int, chunk: int,
                                                                budget: int | None) -> None:
    """Deferred sessions with chunks: later batches queued; a rebind takes points away; then the queue."""
    _taken_away_then_backlog(points, seed, chunk, budget)


def _taken_away_then_backlog(points: list[Point], seed: int, chunk: int, budget: int | None) -> None:
    rng = random.Random(seed)
    store = ChunkedStore(SMALL, chunk, budget)
    cut = rng.randint(0, len(points))
    store.add(points[:cut], as_of=AS_OF)
    store.points += points[cut:]
    queued = [p.start for p in points[cut:]]
    gone = [p for p in points if rng.random() < 0.3]
    store.points = [p for p in store.points if p not in gone]
    store.walk([p.start for p in gone], as_of=AS_OF)
    store.walk(queued, as_of=AS_OF)
    kept = [p for p in points if p not in gone]
    assert store.stored() == sessionize(kept, account_id="acc", service="power", rules=BERLIN_RULES, as_of=AS_OF)


_B, _MIN = BOUNDARY, timedelta(minutes=1)
_LOST_AT_THE_PERIOD_START = [
    state(_B + 30 * _MIN, False, "d1"), gauge(_B + 2880 * _MIN, "0", "d1"), state(_B - 10 * _MIN, False, "d1"),
    gauge(_B, "0", "d1"), gauge(_B + 50 * _MIN, "0", "d1"), state(_B - 10 * _MIN, False, "d2"),
    usage(_B, "0", "d1", end=_B + 10 * _MIN), usage(_B, "0", "d1"), state(_B - 20 * _MIN, False, "d1"),
    state(_B + 10 * _MIN, False, "d1"), gauge(_B - 10 * _MIN, "0", "d3"), gauge(_B + 1440 * _MIN, "0", "d2"),
    gauge(_B + 10 * _MIN, "0", "d1"), gauge(_B + 20 * _MIN, "0", "d1"), state(_B + 1440 * _MIN, False, "d1"),
    usage(_B + 1440 * _MIN, "0", "d1"), gauge(_B + 10 * _MIN, "0", "d2"), gauge(_B, "0", "d2"),
    gauge(_B - 10 * _MIN, "0", "d2"), state(_B, False, "d1"), usage(_B, "0", "d2", end=_B + 10 * _MIN),
    gauge(_B + 30 * _MIN, "0", "d1"), gauge(_B + 1440 * _MIN, "0", "d1"), gauge(_B - 20 * _MIN, "0", "d1"),
    gauge(_B - 10 * _MIN, "0", "d1"), state(_B - 10 * _MIN, True, "d1")]


def test_a_budgeted_walk_keeps_the_session_opening_a_period_after_points_are_taken_away() -> None:
    """Found by the property above: a walk cut by its budget re-creates, in round 1, the zero-length session
    opening the April period in an earlier mark; round 2 replays the stored later mark that still listed it
    as created. The session stays: another stored mark lists it (``Listed``)."""
    _taken_away_then_backlog(_LOST_AT_THE_PERIOD_START, 92587350, 1, 1)


START = datetime(2026, 3, 2, 0, 0, tzinfo=BERLIN)  # a segment start (3-hour grid from 2000-01-01 UTC)
RULES = SessionRules(idle_timeout=HOUR, zone=BERLIN)


def _full_segment(n: int) -> list[Point]:
    """``n`` readings of 100 meters of one account, every few seconds, all in one 3-hour segment."""
    per = max(1, n // 100)
    step = (SEGMENT - timedelta(minutes=10)) / per
    return [usage(START + step * i, "1", device=f"d{d}", end=START + step * (i + 1))
            for i in range(per) for d in range(100)][:n]


@pytest.mark.parametrize("n", [3_000, 12_000])
def test_points_read_for_one_point_do_not_grow_with_the_segment(n: int) -> None:
    """In a segment already holding ``n`` points, one in-order and one late point read about a chunk."""
    history = _full_segment(n)
    store = ChunkedStore(SEGMENT, CHUNK, rules=RULES)
    for i in range(0, n, 500):
        batch = history[i:i + 500]
        store.add(batch, as_of=max(p.end for p in batch))
    now = max(p.end for p in history)
    in_order = usage(now, "1", device="d7", end=now + timedelta(seconds=5))
    out = store.add([in_order], as_of=now + timedelta(seconds=5))
    assert 0 < out.points_read <= CHUNK + 200
    late_at = START + (now - START) / 3
    late = usage(late_at, "2", device="dx", end=late_at + timedelta(seconds=1))
    out = store.add([late], as_of=now + timedelta(seconds=5))
    # the late point's chunk, then the open session's later marks move without points, then the last chunk
    assert 0 < out.points_read <= 2 * (CHUNK + 200)
    assert out.marks_moved <= n // CHUNK + 1
    assert store.stored() == sessionize([*history, in_order, late], account_id="acc", service="power",
                                        rules=RULES, as_of=now + timedelta(seconds=5))


def test_appending_batches_read_their_own_points_not_the_chunk_they_grow() -> None:
    """In-order batches at the end of a segment: each reads about its own and the last batch's points, and the
    segment keeps about one mark per chunk (the chunk before the new points folds into the one before it)."""
    n, batch = 6_000, 100
    history = _full_segment(n)
    store = ChunkedStore(SEGMENT, CHUNK, rules=RULES)
    reads = []
    for i in range(0, n, batch):
        part = history[i:i + batch]
        reads.append(store.add(part, as_of=max(p.end for p in part)).points_read)
    assert max(reads) <= CHUNK // TAIL + 2 * batch  # not up to a chunk (1,024) as the last chunk fills
    assert len(store.marks) <= n // CHUNK + 2 * 2  # the history spans two segments; each may end in two small marks
    assert all(m.points is not None and m.points <= CHUNK for m in store.marks.values())
    assert store.stored() == sessionize(history, account_id="acc", service="power", rules=RULES,
                                        as_of=max(p.end for p in history))


@settings(max_examples=150, deadline=None)
@given(points=point_sets(), seed=st.integers(0, 2**32), segment=st.sampled_from([SMALL, HOUR, 3 * HOUR]),
       chunk=st.sampled_from([1, 2, 3, 5]), budget=st.sampled_from([None, 1, 3]))
def test_appended_in_time_order_then_late_equals_replay(points: list[Point], seed: int, segment: timedelta,
                                                        chunk: int, budget: int | None) -> None:
    """Mostly in time order (chunks cut before new points, folded into the chunk before), then a few late."""
    rng = random.Random(seed)
    store = ChunkedStore(segment, chunk, budget)
    ordered = sorted(points, key=lambda p: p.start)
    late = [p for p in ordered if rng.random() < 0.15]
    arrivals = [p for p in ordered if p not in late] + late
    while arrivals:
        size = rng.randint(1, 4)
        batch, arrivals = arrivals[:size], arrivals[size:]
        store.add(batch, as_of=max(p.start for p in store.points + batch) + timedelta(minutes=rng.randint(0, 90)))
    store.add([], as_of=AS_OF)  # the idle sweep
    assert store.stored() == sessionize(points, account_id="acc", service="power", rules=BERLIN_RULES, as_of=AS_OF)
