"""Incremental sessions: the walk of :mod:`~usagehub.core.sessions` cut into fixed segments of event time.

At the start of every segment (``SEGMENT`` of event time, aligned to the epoch)
that holds points, a :class:`Mark` records the walk state (:class:`Entry`: the
open session's shape, the active states, and the open session's accumulation so
far) and the open session's accumulation within the segment (``piece``).

A batch that changes points replays only the segments it touched, from the mark
at or before them. At the next stored mark the new walk state is compared with
the stored one: equal, nothing after it changes; equal but for the open
session's accumulation, that session's later marks are advanced with their
stored pieces (no points read) and only the segment where it ends is replayed.
So the points read for a late event are a few segments, whatever the history.

:func:`rewalk` is written sans I/O: it yields :class:`MarkBefore`,
:class:`MarksAfter` and :class:`PointsIn` requests and is sent their answers;
storage answers them from SQL, tests from lists. The result equals
:func:`~usagehub.core.sessions.sessionize` over all points (property-tested).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from usagehub.core.aggregation import Partial
from usagehub.core.allocation import Point, net_points
from usagehub.core.events import Aggregation
from usagehub.core.periods import Period, ensure_aware
from usagehub.core.sessions import Machine, Open, Resume, Session, SessionRules, SortKey, sort_key

SEGMENT = timedelta(hours=3)
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


def segment_start(at: datetime, segment: timedelta = SEGMENT) -> datetime:
    """The start of the segment holding instant ``at``."""
    return _EPOCH + ((ensure_aware(at) - _EPOCH) // segment) * segment


@dataclass(frozen=True, slots=True, kw_only=True)
class Acc:
    """What a session accumulated over some points: activity count, devices, per-product partials."""

    count: int = 0
    devices: frozenset[str] = frozenset()
    partials: Mapping[str, Partial] = field(default_factory=dict)

    def merge(self, other: Acc) -> Acc:
        """The accumulation of both (disjoint) point sets."""
        partials = dict(self.partials)
        for product, part in other.partials.items():
            partials[product] = partials[product].merge(part) if product in partials else part
        return Acc(count=self.count + other.count, devices=self.devices | other.devices, partials=partials)


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenShape:
    """The open session's fields that steer the walk."""

    period: Period
    start: datetime
    last: datetime
    resume: Resume
    last_key: SortKey | None


ActiveState = tuple[str, str, datetime, Aggregation]  # (device, product, since, aggregation)


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """The walk state at a segment boundary (after every point before it)."""

    open: OpenShape | None = None
    active: tuple[ActiveState, ...] = ()
    prefix: Acc = field(default_factory=Acc)   # the open session's accumulation before the boundary

    def same_walk(self, other: Entry) -> bool:
        """Equal but for the open session's accumulation."""
        return self.open == other.open and self.active == other.active


EMPTY = Entry()


@dataclass(frozen=True, slots=True, kw_only=True)
class Mark:
    """A stored segment: its start, the walk state there, and what it adds to the session open there."""

    start: datetime
    entry: Entry
    piece: Acc | None          # None: the session open at entry (if any) closes within the segment
    created: tuple[Resume, ...] = ()  # sessions opened in the segment (the final one: also by ``as_of``)


class _SegmentMachine(Machine):
    """The session walk over one segment, started from an :class:`Entry`."""

    def __init__(self, account_id: str, service: str, rules: SessionRules, entry: Entry) -> None:
        super().__init__(account_id, service, rules)
        self.created: list[Resume] = []
        self.seg_devices: set[str] = set()
        self.active = {(d, p): (since, agg) for d, p, since, agg in entry.active}
        self.entry_resume = entry.open.resume if entry.open else None
        self.entry_count = entry.prefix.count
        if entry.open is not None:
            o, pre = entry.open, entry.prefix
            self.cur = Open(period=o.period, start=o.start, last=o.last, resume=o.resume, count=pre.count,
                            devices=set(pre.devices), aggregations={k: v.aggregation for k, v in pre.partials.items()},
                            base=dict(pre.partials), last_key=o.last_key)

    def open(self, at: datetime, resume: Resume) -> None:
        super().open(at, resume)
        self.created.append(resume)

    def add(self, point: Point, activity: bool) -> None:
        super().add(point, activity)
        self.seg_devices.add(point.device_id)

    def exit(self) -> tuple[Entry, Acc | None]:
        """The walk state after the segment's points and the entry session's piece; folds the samples."""
        active = tuple(sorted((d, p, since, agg) for (d, p), (since, agg) in self.active.items()))
        cur = self.cur
        if cur is None:
            return Entry(active=active), None
        fed = cur.samples.keys() | cur.seconds.keys()  # a piece holds only what this segment fed
        piece_partials = {product: Partial.of(agg, cur.samples.get(product, ()), cur.seconds.get(product, Decimal(0)))
                          for product, agg in cur.aggregations.items() if product in fed}
        piece = None
        if cur.resume == self.entry_resume:
            piece = Acc(count=cur.count - self.entry_count, devices=frozenset(self.seg_devices),
                        partials=piece_partials)
        cur.base = {**cur.base, **{p: cur.base[p].merge(part) if p in cur.base else part
                                   for p, part in piece_partials.items()}}
        cur.samples, cur.seconds = {}, {}
        shape = OpenShape(period=cur.period, start=cur.start, last=cur.last, resume=cur.resume,
                          last_key=cur.last_key)
        return Entry(open=shape, active=active,
                     prefix=Acc(count=cur.count, devices=frozenset(cur.devices), partials=dict(cur.base))), piece


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One replayed segment: its new mark, the walk state after it, the sessions it emitted."""

    mark: Mark
    exit: Entry
    sessions: list[Session]


def step(start: datetime, entry: Entry, points: Iterable[Point], *, account_id: str, service: str,
         rules: SessionRules, as_of: datetime | None = None) -> Step:
    """Walk one segment's points from ``entry``; with ``as_of`` (the last segment) finish the walk too."""
    machine = _SegmentMachine(account_id, service, rules, entry)
    for point in sorted(net_points(points), key=sort_key):
        machine.feed(point)
    after, piece = machine.exit()
    if as_of is not None:
        machine.finish(ensure_aware(as_of))
    return Step(mark=Mark(start=start, entry=entry, piece=piece, created=tuple(machine.created)), exit=after,
                sessions=machine.sessions)


# --- the replay driver, sans I/O ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MarkBefore:
    """Request: the last stored mark that starts at or before ``at`` (or None)."""

    at: datetime


@dataclass(frozen=True, slots=True)
class MarksAfter:
    """Request: up to ``limit`` stored marks starting after ``after``, in order."""

    after: datetime
    limit: int


@dataclass(frozen=True, slots=True)
class PointsIn:
    """Request: the stored points (of the account and service) that start in ``[start, end)``."""

    start: datetime
    end: datetime


Request = MarkBefore | MarksAfter | PointsIn


@dataclass(slots=True, kw_only=True)
class Outcome:
    """What to store: marks to upsert, mark starts to delete, sessions to upsert, session resumes to delete."""

    marks: list[Mark] = field(default_factory=list)
    dropped: list[datetime] = field(default_factory=list)
    sessions: list[Session] = field(default_factory=list)
    stale: list[Resume] = field(default_factory=list)
    created: list[Resume] = field(default_factory=list)
    points_read: int = 0


_PAGE = 16


def rewalk(*, account_id: str, service: str, rules: SessionRules, as_of: datetime, changed: Iterable[datetime],
           segment: timedelta = SEGMENT) -> Generator[Request, Any, Outcome]:
    """Bring the stored walk up to date after points starting at ``changed`` instants were added or removed.

    With no ``changed`` instant, only the last segment is walked again (to finish it at ``as_of``).
    """
    todo = sorted({segment_start(t, segment) for t in changed})
    out = _Run(account_id=account_id, service=service, rules=rules, as_of=as_of, segment=segment)
    first: Mark | None = yield MarkBefore(todo[0] if todo else FAR_FUTURE)
    if first is None and not todo:
        return out.result
    queue: list[Mark] = [first] if first else []
    after = first.start if first else todo[0] - segment
    exhausted, force = False, True
    entry = first.entry if first else EMPTY
    visited: datetime | None = None  # the last segment the walk reached
    while True:
        while len(queue) < 2 and not exhausted:
            page: list[Mark] = yield MarksAfter(after, _PAGE)
            exhausted = len(page) < _PAGE
            if page:
                queue += page
                after = page[-1].start
        starts = ([queue[0].start] if queue else []) + todo[:1]
        if not starts:
            break
        s = visited = min(starts)
        m = queue.pop(0) if queue and queue[0].start == s else None
        changed_here = bool(todo) and todo[0] == s
        if changed_here:
            todo.pop(0)
        last = not queue and not todo and exhausted
        if m is not None and not changed_here and not force and not last:
            if entry == m.entry:
                # Nothing differs from here to the next changed segment (or to the end): jump there.
                target: Mark | None = yield MarkBefore(todo[0] if todo else FAR_FUTURE)
                if target is not None and target.start > s:
                    entry, queue, after, exhausted, force = target.entry, [target], target.start, False, True
                    continue
            elif (entry.same_walk(m.entry) and m.piece is not None and queue and entry.open is not None
                  and queue[0].entry.open is not None and queue[0].entry.open.resume == entry.open.resume
                  and not (todo and todo[0] < queue[0].start)):
                # Same walk, only the open session's accumulation differs: advance it without points.
                out.result.marks.append(replace(m, entry=entry))
                entry = replace(queue[0].entry, prefix=entry.prefix.merge(m.piece))
                continue
        force = False
        points: list[Point] = yield PointsIn(s, s + segment)
        entry = out.replay(s, m, entry, points, last)
    if not out.finished and (out.result.dropped or visited is not None):
        # The last segment lost all its points (or, with deferred sessions, a changed segment not walked yet
        # holds none): finish after the last mark that remains before it.
        anchor = max(out.result.dropped) if out.result.dropped else visited
        assert anchor is not None
        before = anchor - timedelta(microseconds=1)
        tail: Mark | None = yield MarkBefore(before)
        while tail is not None and tail.start in out.result.dropped:
            tail = yield MarkBefore(tail.start - timedelta(microseconds=1))
        walked = [m for m in out.result.marks if m.start <= before]  # this run's versions come first
        if walked and (tail is None or walked[-1].start >= tail.start):
            tail = walked[-1]
        if tail is not None:
            points = yield PointsIn(tail.start, tail.start + segment)
            out.replay(tail.start, tail, tail.entry, points, True)
    return out.result


@dataclass(slots=True, kw_only=True)
class _Run:
    account_id: str
    service: str
    rules: SessionRules
    as_of: datetime
    segment: timedelta
    result: Outcome = field(default_factory=Outcome)
    finished: bool = False

    def replay(self, start: datetime, old: Mark | None, entry: Entry, points: Sequence[Point], last: bool) -> Entry:
        """Replay one segment; returns the walk state after it."""
        self.result.points_read += len(points)
        if old is not None:
            self.result.stale.extend(old.created)
        if not points:
            if old is not None:
                self.result.dropped.append(start)
            return entry
        done = step(start, entry, points, account_id=self.account_id, service=self.service, rules=self.rules,
                    as_of=self.as_of if last else None)
        self.finished = self.finished or last
        self.result.marks.append(done.mark)
        self.result.created.extend(done.mark.created)
        self.result.sessions.extend(done.sessions)
        return done.exit


def settle_outcome(outcome: Outcome) -> Outcome:
    """Keep the last version of each mark and session; stale sessions are those no longer created."""
    marks = {m.start: m for m in outcome.marks}
    sessions = {s.resume: s for s in outcome.sessions}
    dropped = sorted(set(outcome.dropped) - set(marks))
    created = set(outcome.created)
    stale = sorted({r for r in outcome.stale if r not in created}, key=lambda r: r.key)
    return Outcome(marks=sorted(marks.values(), key=lambda m: m.start), dropped=dropped,
                   sessions=sorted(sessions.values(), key=lambda s: s.resume.key), stale=stale,
                   created=sorted(created, key=lambda r: r.key), points_read=outcome.points_read)
