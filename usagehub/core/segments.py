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
from usagehub.core.sessions import Machine, Open, Resume, Session, SessionRules, SortKey, partial_of_points, sort_key

SEGMENT = timedelta(hours=3)
# A segment holding more points than this is cut into chunks, each with its own mark (at the instant of its
# first point; the first chunk's mark stays at the segment start), so replaying one chunk reads at most about
# CHUNK points plus the points at one instant, however full the segment is.
CHUNK = 1024
# Points appended to the end of a segment start a chunk of their own once the chunk they follow holds this share
# of CHUNK (``step``'s ``cut``): a batch appending to a segment reads at most CHUNK // TAIL older points again.
TAIL = 8
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # segments are aligned to it
_EPOCH = EPOCH
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


def segment_start(at: datetime, segment: timedelta = SEGMENT) -> datetime:
    """The start of the segment holding instant ``at``."""
    return _EPOCH + ((ensure_aware(at) - _EPOCH) // segment) * segment


_PER_DAY, _WIDTH_S = timedelta(days=1) // SEGMENT, SEGMENT.seconds
assert timedelta(days=1) == _PER_DAY * SEGMENT, "segment_index needs segments that tile a day"


def segment_index(at: datetime) -> int:
    """The number of the segment (of ``SEGMENT``, from ``EPOCH``) holding the aware instant ``at``.

    A key for grouping instants by segment, for hot paths: ``segment_start``'s timedelta division and product
    cost ~1 µs an instant; days and seconds of one difference cost a fifth of that.
    """
    since = at - _EPOCH
    return since.days * _PER_DAY + since.seconds // _WIDTH_S


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
    points: int | None = None  # points of its chunk (None: not known, so never merged into the mark before it)


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
        piece_partials = {product: partial_of_points(agg, cur.samples.get(product, ()),
                                                     cur.seconds.get(product, Decimal(0)))
                          for product, agg in cur.aggregations.items() if product in fed}
        piece = None
        if cur.resume == self.entry_resume:
            piece = Acc(count=cur.count - self.entry_count, devices=frozenset(self.seg_devices),
                        partials=piece_partials)
        cur.base = {**cur.base, **{p: cur.base[p].merge(part) if p in cur.base else part
                                   for p, part in piece_partials.items()}}
        cur.samples, cur.seconds = {}, {}
        shape = OpenShape(period=cur.period, start=cur.start, last=cur.last, resume=cur.resume,
                          last_key=cur.key())
        return Entry(open=shape, active=active,
                     prefix=Acc(count=cur.count, devices=frozenset(cur.devices), partials=dict(cur.base))), piece


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One replayed segment (or chunk): its new marks, the walk state after it, the sessions it emitted."""

    marks: list[Mark]
    exit: Entry
    sessions: list[Session]


def _cut(ordered: Sequence[Point], begin: int, chunk: int | None) -> int:
    """The end of the chunk starting at ``begin``: ``chunk`` points on, moved past points of the same instant."""
    end = len(ordered) if chunk is None else min(begin + chunk, len(ordered))
    while 0 < end < len(ordered) and ordered[end].start == ordered[end - 1].start:
        end += 1
    return end


def step(start: datetime, entry: Entry, points: Iterable[Point], *, account_id: str, service: str,
         rules: SessionRules, as_of: datetime | None = None, chunk: int | None = CHUNK,
         cut: datetime | None = None) -> Step:
    """Walk one segment's points from ``entry``, a mark per chunk; with ``as_of`` (the last) finish the walk too.

    With ``cut``, the first chunk also ends before the first point at or after ``cut`` if at least
    ``chunk // TAIL`` points come before it (see ``rewalk``).
    """
    ordered = sorted(net_points(points), key=sort_key)
    marks: list[Mark] = []
    sessions: list[Session] = []
    begin, at = 0, start
    split = len(ordered) if cut is None else next((i for i, p in enumerate(ordered) if p.start >= cut), len(ordered))
    if split < max(1, (chunk or 0) // TAIL):
        split = len(ordered)  # few older points: read again, cheaper than a mark more
    while True:
        end = _cut(ordered, begin, chunk)
        if begin < split < end:
            end = split
        machine = _SegmentMachine(account_id, service, rules, entry)
        for point in ordered[begin:end]:
            machine.feed(point)
        after, piece = machine.exit()
        final = end >= len(ordered)
        if final and as_of is not None:
            machine.finish(ensure_aware(as_of))
        marks.append(Mark(start=at, entry=entry, piece=piece, created=tuple(machine.created), points=end - begin))
        sessions += machine.sessions
        if final:
            return Step(marks=marks, exit=after, sessions=sessions)
        entry, begin, at = after, end, ordered[end].start


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


@dataclass(frozen=True, slots=True)
class Listed:
    """Request: which of ``resumes`` a stored mark lists as created, among the marks whose start is not in
    ``skip`` and is at or after ``since`` (a session opens in the segment of its key or later) or is the
    last stored mark (a session opened by ``as_of``). Answered with a set of resumes."""

    resumes: frozenset[Resume]
    since: datetime
    skip: frozenset[datetime]


Request = MarkBefore | MarksAfter | PointsIn | Listed


@dataclass(slots=True, kw_only=True)
class Outcome:
    """What to store: marks to upsert, mark starts to delete, sessions to upsert, session resumes to delete."""

    marks: list[Mark] = field(default_factory=list)
    dropped: list[datetime] = field(default_factory=list)
    sessions: list[Session] = field(default_factory=list)
    stale: list[Resume] = field(default_factory=list)
    created: list[Resume] = field(default_factory=list)
    points_read: int = 0
    marks_moved: int = 0  # marks advanced without reading points
    pending: list[datetime] = field(default_factory=list)  # stopped by the budget: rewalk these instants later
    read: dict[datetime, Mark] = field(default_factory=dict)  # stored marks the walk read, by start
    unchanged: int = 0  # marks walked again equal to their stored version (``settle_outcome`` does not write them)


_PAGE = 16


def rewalk(*, account_id: str, service: str, rules: SessionRules, as_of: datetime, changed: Iterable[datetime],
           segment: timedelta = SEGMENT, chunk: int | None = CHUNK,
           budget: int | None = None, append: bool = True) -> Generator[Request, Any, Outcome]:
    """Bring the stored walk up to date after points starting at ``changed`` instants were added or removed.

    With no ``changed`` instant, only the last segment is walked again (to finish it at ``as_of``). A
    changed instant replays the chunk (segment, or part of one: see ``CHUNK``) that holds it, from the mark
    at or before it. With ``budget``, the walk stops once the points it read and the marks it moved reach
    it, at the next segment or chunk, and says what is left (``Outcome.pending``): rewalking those instants
    later gives what an unbounded walk would. ``append`` gives points appended to the end of a segment a
    chunk of their own (False: the whole last chunk is read again, as before; for benchmarks).

    A session is stored while a stored mark lists it as created: one that a replayed mark no longer creates
    is stale only if no mark this walk left in place lists it (a walk cut by its budget may have moved its
    creation to an earlier mark in a previous round, before the later mark that listed it is replayed).
    """
    result: Outcome = yield from _walk(account_id=account_id, service=service, rules=rules, as_of=as_of,
                                       changed=changed, segment=segment, chunk=chunk, budget=budget, append=append)
    orphans = frozenset(result.stale) - frozenset(result.created)
    if orphans:
        listed: set[Resume] = yield Listed(
            resumes=orphans, since=min(segment_start(r.key[0], segment) for r in orphans),
            skip=frozenset(m.start for m in result.marks) | frozenset(result.dropped))
        result.stale = [r for r in result.stale if r not in listed]
    return result


def _walk(*, account_id: str, service: str, rules: SessionRules, as_of: datetime, changed: Iterable[datetime],
          segment: timedelta, chunk: int | None, budget: int | None,
          append: bool) -> Generator[Request, Any, Outcome]:
    """The walk of :func:`rewalk`, before its check of stale sessions."""
    todo = sorted({ensure_aware(t) for t in changed})
    out = _Run(account_id=account_id, service=service, rules=rules, as_of=as_of, segment=segment, chunk=chunk)
    first: Mark | None = yield MarkBefore(todo[0] if todo else FAR_FUTURE)
    out.saw(first)
    if first is None and not todo:
        return out.result
    queue: list[Mark] = [first] if first else []
    after = first.start if first else segment_start(todo[0], segment) - segment
    exhausted, force = False, True
    entry = first.entry if first else EMPTY
    visited: datetime | None = None  # the last segment or chunk the walk reached
    fresh = False  # the last segment or chunk reached stored a mark (a walk cut short goes on from it)
    reached = 0  # segments or chunks reached: a walk cut short has gone past the one it went on from
    while True:
        while len(queue) < 2 and not exhausted:
            page: list[Mark] = yield MarksAfter(after, _PAGE)
            out.saw(*page)
            exhausted = len(page) < _PAGE
            if page:
                queue += page
                after = page[-1].start
        if queue and (not todo or queue[0].start <= todo[0]):
            s = queue[0].start
        elif todo:
            s = segment_start(todo[0], segment)  # no stored mark holds it: a segment of its own
        else:
            break
        if (budget is not None and fresh and reached >= 2
                and out.result.points_read + out.result.marks_moved >= budget):
            # Going on from the mark this walk stored last (up to date, it ends at s) replays it, then s;
            # a walk goes past its first two before it may stop, so each one cut short makes progress.
            out.result.pending = [out.result.marks[-1].start, *todo]
            return out.result
        visited, fresh, reached = s, False, reached + 1
        m = queue.pop(0) if queue and queue[0].start == s else None
        end = segment_start(s, segment) + segment
        if queue:
            end = min(end, queue[0].start)
        changed_here = False
        first_changed = todo[0] if todo and todo[0] < end else None
        while todo and todo[0] < end:
            todo.pop(0)
            changed_here = True
        last = not queue and not todo and exhausted
        if m is not None and not changed_here and not force and not last:
            if entry == m.entry:
                # Nothing differs from here to the next changed segment (or to the end): jump there.
                target: Mark | None = yield MarkBefore(todo[0] if todo else FAR_FUTURE)
                out.saw(target)
                if target is not None and target.start > s:
                    entry, queue, after, exhausted, force = target.entry, [target], target.start, False, True
                    continue
            elif (entry.same_walk(m.entry) and m.piece is not None and queue and entry.open is not None
                  and queue[0].entry.open is not None and queue[0].entry.open.resume == entry.open.resume
                  and not (todo and todo[0] < queue[0].start)):
                # Same walk, only the open session's accumulation differs: advance it without points.
                out.result.marks.append(replace(m, entry=entry))
                out.result.created.extend(m.created)  # the same walk creates the same sessions
                out.result.marks_moved += 1
                entry = replace(queue[0].entry, prefix=entry.prefix.merge(m.piece))
                fresh = True
                continue
        force = False
        # The end of a segment (no mark after s in it): its new points get a chunk of their own, and the older
        # ones before them join the chunk before (``_merge``), so the next batch appending to the segment
        # reads these new points again, not the whole chunk it grows.
        appending = (append and chunk is not None and m is not None and first_changed is not None
                     and first_changed > s and end == segment_start(s, segment) + segment)
        points: list[Point] = yield PointsIn(s, end)
        made = len(out.result.marks)
        entry = out.replay(s, m, entry, points, last, cut=first_changed if appending else None)
        fresh = bool(points)
        if appending and len(out.result.marks) - made >= 2 and s > segment_start(s, segment):
            prior: Mark | None = yield MarkBefore(s - timedelta(microseconds=1))
            out.saw(prior)
            _merge(out.result, made, prior, segment, chunk)
    if not out.finished and visited is not None:
        # The last segment lost all its points (or, with deferred sessions, a changed segment not walked yet
        # holds none): finish after the last mark that remains before it.
        before = visited - timedelta(microseconds=1)
        tail: Mark | None = yield MarkBefore(before)
        out.saw(tail)
        while tail is not None and tail.start in out.result.dropped:
            tail = yield MarkBefore(tail.start - timedelta(microseconds=1))
            out.saw(tail)
        walked = [m for m in out.result.marks if m.start <= before]  # this run's versions come first
        if walked and (tail is None or walked[-1].start >= tail.start):
            tail = walked[-1]
        if tail is not None:
            points = yield PointsIn(tail.start, segment_start(tail.start, segment) + segment)
            out.replay(tail.start, tail, tail.entry, points, True)
    return out.result


@dataclass(slots=True, kw_only=True)
class _Run:
    account_id: str
    service: str
    rules: SessionRules
    as_of: datetime
    segment: timedelta
    chunk: int | None
    result: Outcome = field(default_factory=Outcome)
    finished: bool = False

    def saw(self, *marks: Mark | None) -> None:
        """Note stored marks as read (a mark walked again equal to its stored version is not written)."""
        for m in marks:
            if m is not None:
                self.result.read.setdefault(m.start, m)

    def replay(self, start: datetime, old: Mark | None, entry: Entry, points: Sequence[Point], last: bool,
               cut: datetime | None = None) -> Entry:
        """Replay one segment (a chunk starts at ``cut`` too); returns the walk state after it."""
        self.result.points_read += len(points)
        if old is not None:
            self.result.stale.extend(old.created)
        if not points:
            if old is not None:
                self.result.dropped.append(start)
            return entry
        done = step(start, entry, points, account_id=self.account_id, service=self.service, rules=self.rules,
                    as_of=self.as_of if last else None, chunk=self.chunk, cut=cut)
        self.finished = self.finished or last
        self.result.marks.extend(done.marks)
        self.result.created.extend(c for mark in done.marks for c in mark.created)
        self.result.sessions.extend(done.sessions)
        return done.exit


def _merge(result: Outcome, made: int, before: Mark | None, segment: timedelta, chunk: int | None) -> None:
    """Fold the mark made at ``result.marks[made]`` into the stored mark ``before`` it, if both fit in a chunk.

    Two adjacent marks of one segment are one chunk: the earlier entry, the pieces merged (None if the entry's
    session closes in either), the sessions created in both. Only when this walk did not rewrite ``before``.
    """
    mark = result.marks[made]
    if (before is None or chunk is None or before.points is None or mark.points is None
            or before.points + mark.points > chunk
            or segment_start(before.start, segment) != segment_start(mark.start, segment)
            or before.start in result.dropped or any(before.start <= m.start < mark.start for m in result.marks)):
        return
    piece = None if before.piece is None or mark.piece is None else before.piece.merge(mark.piece)
    result.marks[made] = replace(before, piece=piece, created=before.created + mark.created,
                                 points=before.points + mark.points)
    result.dropped.append(mark.start)


def settle_outcome(outcome: Outcome) -> Outcome:
    """Keep the last version of each mark and session; stale sessions are those no longer created.

    A mark walked again equal to the stored one it replaces is not written again (``unchanged``).
    """
    marks = {m.start: m for m in outcome.marks}
    dropped = sorted(set(outcome.dropped) - set(marks))
    changed = [m for start, m in sorted(marks.items()) if outcome.read.get(start) != m]
    sessions = {s.resume: s for s in outcome.sessions}
    created = set(outcome.created)
    stale = sorted({r for r in outcome.stale if r not in created}, key=lambda r: r.key)
    return Outcome(marks=changed, dropped=dropped,
                   sessions=sorted(sessions.values(), key=lambda s: s.resume.key), stale=stale,
                   created=sorted(created, key=lambda r: r.key), points_read=outcome.points_read,
                   marks_moved=outcome.marks_moved, pending=outcome.pending, read=outcome.read,
                   unchanged=outcome.unchanged + len(marks) - len(changed))
