"""Incremental sessions over segment marks: equal to a full replay, and bounded work for a late event."""

from __future__ import annotations

import random
from collections.abc import Generator, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.test_sessions import AS_OF, BERLIN, BERLIN_RULES, HOUR, _arrivals, point_sets, usage
from usagehub.core.allocation import Point
from usagehub.core.segments import (
    EPOCH,
    SEGMENT,
    Listed,
    Mark,
    MarkBefore,
    MarksAfter,
    Outcome,
    PointsIn,
    rewalk,
    segment_index,
    segment_start,
    settle_outcome,
)
from usagehub.core.sessions import Resume, Session, SessionRules, sessionize

SMALL = timedelta(minutes=30)  # small segments: many marks, chains and jumps in few points


class MemoryStore:
    """What storage keeps for one account and service: points, marks, sessions."""

    def __init__(self, segment: timedelta, rules: SessionRules = BERLIN_RULES) -> None:
        self.segment, self.rules = segment, rules
        self.points: list[Point] = []
        self.marks: dict[datetime, Mark] = {}
        self.sessions: dict[Resume, Session] = {}

    def answer(self, request: object) -> Any:
        if isinstance(request, MarkBefore):
            found = [m for s, m in self.marks.items() if s <= request.at]
            return max(found, key=lambda m: m.start) if found else None
        if isinstance(request, MarksAfter):
            return sorted((m for s, m in self.marks.items() if s > request.after),
                          key=lambda m: m.start)[:request.limit]
        if isinstance(request, Listed):
            last = max(self.marks, default=None)
            return {r for s, m in self.marks.items() if s not in request.skip and (s >= request.since or s == last)
                    for r in m.created if r in request.resumes}
        assert isinstance(request, PointsIn)
        return [p for p in self.points if request.start <= p.start < request.end]

    def run(self, gen: Generator[Any, Any, Outcome]) -> Outcome:
        answer = None
        try:
            while True:
                answer = self.answer(gen.send(answer))
        except StopIteration as stop:
            return settle_outcome(stop.value)

    def add(self, batch: Iterable[Point], as_of: datetime) -> Outcome:
        batch = list(batch)
        self.points += batch
        return self.walk([p.start for p in batch], as_of)

    def walk(self, changed: list[datetime], as_of: datetime) -> Outcome:
        """Rewalk after the points at ``changed`` instants changed; store the outcome."""
        out = self.run(rewalk(account_id="acc", service="power", rules=self.rules, as_of=as_of,
                              changed=changed, segment=self.segment))
        for start in out.dropped:
            del self.marks[start]
        self.marks.update({m.start: m for m in out.marks})
        for resume in out.stale:
            self.sessions.pop(resume, None)
        self.sessions.update({s.resume: s for s in out.sessions})
        return out

    def stored(self) -> list[Session]:
        return sorted(self.sessions.values(), key=lambda s: s.resume.key)


@settings(max_examples=200, deadline=None)
@given(points=point_sets(), seed=st.integers(0, 2**32), segment=st.sampled_from([SMALL, HOUR, 3 * HOUR]))
def test_incremental_walk_equals_replay_whatever_the_batches(points: list[Point], seed: int,
                                                            segment: timedelta) -> None:
    """Points arriving shuffled, duplicated, with retractions, in random batches == sessionize of all."""
    assert_arrivals_equal_sessionize(MemoryStore(segment), points, seed)


def assert_arrivals_equal_sessionize(store: MemoryStore, points: list[Point], seed: int) -> None:
    """Feed ``points`` shuffled, duplicated, with retractions, in random batches; the sweep; == sessionize."""
    rng = random.Random(seed)
    arrivals = _arrivals(points, rng)
    while arrivals:
        size = rng.randint(1, 5)
        batch, arrivals = arrivals[:size], arrivals[size:]
        seen = max(p.start for p in store.points + batch)
        store.add(batch, as_of=seen + timedelta(minutes=rng.randint(0, 90)))
    store.add([], as_of=AS_OF)  # the idle sweep
    assert store.stored() == sessionize(points, account_id="acc", service="power", rules=BERLIN_RULES,
                                        as_of=AS_OF)


@settings(max_examples=60, deadline=None)
@given(points=point_sets(), seed=st.integers(0, 2**32))
def test_removing_points_rewalks_too(points: list[Point], seed: int) -> None:
    """A rebind takes points away: the walk over what is left equals a replay of what is left."""
    rng = random.Random(seed)
    store = MemoryStore(SMALL)
    store.add(points, as_of=AS_OF)
    gone = [p for p in points if rng.random() < 0.3]
    store.points = [p for p in store.points if p not in gone]
    out = store.run(rewalk(account_id="acc", service="power", rules=BERLIN_RULES, as_of=AS_OF,
                           changed=[p.start for p in gone], segment=SMALL))
    for start in out.dropped:
        del store.marks[start]
    store.marks.update({m.start: m for m in out.marks})
    for resume in out.stale:
        store.sessions.pop(resume, None)
    store.sessions.update({s.resume: s for s in out.sessions})
    kept = [p for p in points if p not in gone]
    assert store.stored() == sessionize(kept, account_id="acc", service="power", rules=BERLIN_RULES, as_of=AS_OF)


@settings(max_examples=150, deadline=None)
@given(points=point_sets(), seed=st.integers(0, 2**32))
def test_walk_during_a_session_backlog_then_the_queue_equals_replay(points: list[Point], seed: int) -> None:
    """Deferred sessions: later batches stored but queued (not walked); meanwhile an inline walk (a rebind
    taking points away, also from queued segments); then the queue replayed == a replay of what is left."""
    rng = random.Random(seed)
    store = MemoryStore(SMALL)
    cut = rng.randint(0, len(points))
    store.add(points[:cut], as_of=AS_OF)
    store.points += points[cut:]  # queued by ingest, not walked yet
    queued = [p.start for p in points[cut:]]
    gone = [p for p in points if rng.random() < 0.3]
    store.points = [p for p in store.points if p not in gone]
    store.walk([p.start for p in gone], as_of=AS_OF)  # the inline walk, while the queue waits
    store.walk(queued, as_of=AS_OF)  # the session worker
    kept = [p for p in points if p not in gone]
    assert store.stored() == sessionize(kept, account_id="acc", service="power", rules=BERLIN_RULES, as_of=AS_OF)


def _history(days: int) -> list[Point]:
    start = datetime(2026, 3, 1, tzinfo=BERLIN)
    return [usage(start + timedelta(minutes=15 * i), "2", end=start + timedelta(minutes=15 * (i + 1)))
            for i in range(days * 96)]


@settings(max_examples=25, deadline=None)
@given(days=st.integers(3, 28), late_by_h=st.integers(0, 60), lag=st.integers(1, 14))
def test_points_read_for_one_late_event_do_not_grow_with_history(days: int, late_by_h: int, lag: int) -> None:
    """A meter that never idles keeps one session all month: a late reading still reads a few segments."""
    rules = SessionRules(idle_timeout=HOUR, zone=BERLIN)
    history = _history(days)
    store = MemoryStore(timedelta(hours=3), rules)
    for i in range(0, len(history), 96):  # a day per batch, in order
        store.add(history[i:i + 96], as_of=history[min(i + 95, len(history) - 1)].end)
    now = history[-1].end
    at = now - timedelta(hours=late_by_h, minutes=7)
    late = usage(at, "1", device="d2", end=at + timedelta(minutes=3))  # another device of the account
    out = store.add([late], as_of=now)
    # the late segment, the next one (convergence) and the last one (finish): 3 segments of 12 points
    assert out.points_read <= 3 * 12 + 1
    assert len(out.sessions) <= 2
    assert store.stored() == sessionize([*history, late], account_id="acc", service="power", rules=rules,
                                        as_of=now)


@settings(max_examples=60, deadline=None)
@given(points=point_sets(), seed=st.integers(0, 2**32))
def test_a_walk_again_over_unchanged_points_writes_no_mark(points: list[Point], seed: int) -> None:
    """Walking segments again whose points did not change (a segment queued twice) rewrites no mark."""
    rng = random.Random(seed)
    store = MemoryStore(SMALL)
    store.add(points, as_of=AS_OF)
    before = dict(store.marks)
    again = [p.start for p in points if rng.random() < 0.5]
    out = store.walk(again, AS_OF)
    assert out.marks == [] and out.dropped == []
    assert out.unchanged >= (1 if again and before else 0)
    assert store.marks == before
    assert store.stored() == sessionize(points, account_id="acc", service="power", rules=BERLIN_RULES,
                                        as_of=AS_OF)


@settings(max_examples=300, deadline=None)
@given(at=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2200, 1, 1),
                       timezones=st.builds(timezone, st.timedeltas(min_value=timedelta(hours=-14),
                                                                    max_value=timedelta(hours=14)))))
def test_segment_index_numbers_the_segment_that_segment_start_names(at: datetime) -> None:
    # Microseconds and offsets of any size, before and after EPOCH: the index keys exactly segment_start's groups.
    assert segment_start(at) == EPOCH + segment_index(at) * SEGMENT
