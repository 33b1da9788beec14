"""Billable sessions: a deterministic function of an account's points for one service.

Points are netted (:func:`~usagehub.core.allocation.net_points`) and walked in
:func:`sort_key` order. A session opens on an activation or on the first
activity; it closes on the deactivation that leaves nothing active, when the
idle timeout passes with nothing active, or at the billing-period boundary (a
state still active there carries into a session that opens at the boundary).
The same point set and ``as_of`` always give the same sessions, so a late event
is handled by recomputing from the last session that starts before it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from zoneinfo import ZoneInfo

from usagehub.core.aggregation import Partial, Sample, seconds_between
from usagehub.core.allocation import Point, PointKind, net_points
from usagehub.core.events import Aggregation
from usagehub.core.periods import Period, ensure_aware, next_period, period_of

SortKey = tuple[datetime, int, datetime, str, str, str, str]
StateKey = tuple[str, str]  # (device, product)


def sort_key(point: Point) -> SortKey:
    """The total order of points: time, then activations before usage before deactivations."""
    rank = 1 if point.active is None else (0 if point.active else 2)
    return (point.start, rank, point.end, point.device_id, point.product, point.label or "", point.tie)


def _boundary_key(at: datetime) -> SortKey:
    return (at, -1, at, "", "", "", "")  # before every point at the boundary


class CloseReason(StrEnum):
    """Why a session closed."""

    DEACTIVATION = "deactivation"
    IDLE = "idle"
    PERIOD_END = "period_end"


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRules:
    """How one account's sessions of one service break: idle timeout and the account's zone."""

    idle_timeout: timedelta
    zone: ZoneInfo


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume:
    """Where a recomputation restarts: a sort key and the states active just before it."""

    key: SortKey
    active: frozenset[tuple[str, str, Aggregation]] = frozenset()  # (device, product, aggregation)


@dataclass(frozen=True, slots=True, kw_only=True)
class Carry:
    """An open session's walk state after its last point: enough to continue it without replaying."""

    last_key: SortKey                          # the last point fed (or the resume key)
    last: datetime                             # end of the last activity
    base: Mapping[str, Partial]                # per product, without the provisional seconds of open states
    active: tuple[tuple[str, str, datetime, Aggregation], ...] = ()  # (device, product, since, aggregation)


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """One billable session of an account and service, within one billing period."""

    account_id: str
    service: str
    period: Period
    start: datetime
    end: datetime
    closed_reason: CloseReason | None          # None: still open at ``as_of``
    activity_count: int
    devices: frozenset[str]
    partials: Mapping[str, Partial]            # per product, mergeable into the period's value
    resume: Resume
    expires_at: datetime | None = None         # an open session closes then without new activity
    carry: Carry | None = None                 # continue with later points (continue_open); None: final

    @property
    def duration_s(self) -> Decimal:
        """Seconds from start to end."""
        return seconds_between(self.start, self.end)

    @property
    def aggregates(self) -> dict[str, Decimal | None]:
        """Each product's aggregated value over the session."""
        return {product: p.result() for product, p in self.partials.items()}


@dataclass(slots=True, kw_only=True)
class _Open:
    period: Period
    start: datetime
    last: datetime
    resume: Resume
    count: int = 0
    devices: set[str] = field(default_factory=set)
    samples: dict[str, list[Point]] = field(default_factory=dict)  # points fed, per product (see samples_of)
    aggregations: dict[str, Aggregation] = field(default_factory=dict)
    seconds: dict[str, Decimal] = field(default_factory=dict)
    base: dict[str, Partial] = field(default_factory=dict)   # partials carried in by continue_open
    last_key: SortKey | None = None
    last_point: Point | None = None  # the last point fed: its sort key is the walk's last key (computed when read)

    def key(self) -> SortKey | None:
        """The sort key of the last point fed (else the key the session was restored with)."""
        return self.last_key if self.last_point is None else sort_key(self.last_point)

    def partials(self) -> dict[str, Partial]:
        """Each product's partial so far (carried-in base merged with the samples fed since)."""
        out = {}
        for product, agg in self.aggregations.items():
            part = partial_of_points(agg, self.samples.get(product, ()), self.seconds.get(product, Decimal(0)))
            out[product] = self.base[product].merge(part) if product in self.base else part
        return out

    def add_seconds(self, product: str, seconds: Decimal, aggregation: Aggregation) -> None:
        self.aggregations.setdefault(product, aggregation)
        self.seconds[product] = self.seconds.get(product, Decimal(0)) + seconds


def samples_of(points: Sequence[Point]) -> list[Sample]:
    """The samples of points fed to a session, as ``Partial.of`` takes them.

    Only a ``last`` compares ties, and only between samples at the latest instant: the others get none (the
    tie's ISO time was a tenth of the walk's cost per point), which gives the same partial.
    """
    if not points:
        return []
    latest = max(p.end for p in points)
    return [Sample(at=p.end, value=p.value, label=p.label,
                   tie=_tie(p) if p.end == latest else "") for p in points]


def _tie(p: Point) -> str:
    return f"{p.start.isoformat()}|{p.device_id}|{p.tie}"


def partial_of_points(aggregation: Aggregation, points: Sequence[Point], seconds: Decimal = Decimal(0)) -> Partial:
    """``Partial.of`` over the samples of points fed to a session, without building the samples.

    A unique count (its labels) goes through ``Partial.of``; the others need values, and for the last one
    the tie of the points at the latest instant only.
    """
    if not points or aggregation is Aggregation.UNIQUE_COUNT:
        return Partial.of(aggregation, samples_of(points), seconds)
    values = [p.value for p in points]
    latest = max(p.end for p in points)
    final = max((_tie(p), p.value) for p in points if p.end == latest)
    return Partial(aggregation=aggregation, count=len(values), total=sum(values, Decimal(0)), minimum=min(values),
                   maximum=max(values), last=final[1], last_key=(latest, final[0], final[1]), seconds=seconds)


class _Machine:
    """The walk over sorted points; ``sessions`` holds the result."""

    def __init__(self, account_id: str, service: str, rules: SessionRules) -> None:
        self.account_id, self.service, self.rules = account_id, service, rules
        self.active: dict[StateKey, tuple[datetime, Aggregation]] = {}
        self.cur: _Open | None = None
        self.sessions: list[Session] = []

    def open(self, at: datetime, resume: Resume) -> None:
        self.cur = _Open(period=period_of(at, self.rules.zone), start=at, last=at, resume=resume)

    def carry(self, at: datetime, active: Mapping[StateKey, Aggregation]) -> None:
        """Open a session at a period start with ``active`` states carried in."""
        self.active = {key: (at, agg) for key, agg in active.items()}
        states = frozenset((device, product, agg) for (device, product), agg in active.items())
        self.open(at, Resume(key=_boundary_key(at), active=states))

    def is_activity(self, point: Point) -> bool:
        if point.kind is PointKind.USAGE:
            return bool(point.value)
        if point.kind is PointKind.STATE:
            return bool(point.active) != ((point.device_id, point.product) in self.active)
        return True

    def feed(self, point: Point) -> None:
        cur = self.cur
        # maybe_close acts only past the period's end or, with nothing active, past the idle deadline: the
        # walk's points are mostly neither, so the call is spared (a tenth of the walk's cost per point).
        if cur is not None and (point.start >= cur.period.end
                                or (not self.active and point.start > cur.last + self.rules.idle_timeout)):
            self.maybe_close(point.start)
        activity = bool(point.value) if point.kind is PointKind.USAGE else self.is_activity(point)
        if self.cur is None:
            if not activity:
                return  # zero usage and repeated "off" open nothing
            self.open(point.start, Resume(key=sort_key(point)))
        self.add(point, activity)

    def add(self, point: Point, activity: bool) -> None:
        cur = self.cur
        assert cur is not None
        cur.aggregations.setdefault(point.product, point.aggregation)
        cur.samples.setdefault(point.product, []).append(point)
        cur.devices.add(point.device_id)
        cur.last_point = point
        if activity:
            cur.count += 1
            # Allocation splits spans at period boundaries; clamp anyway so a session never leaves its period.
            cur.last = max(cur.last, min(point.end, cur.period.end))
        if point.kind is PointKind.STATE and activity:
            self.switch(point, cur)

    def switch(self, point: Point, cur: _Open) -> None:
        key = (point.device_id, point.product)
        if point.active:
            self.active[key] = (point.start, point.aggregation)
            return
        since, agg = self.active.pop(key)
        cur.add_seconds(point.product, seconds_between(since, point.start), agg)
        if not self.active:
            self.close(CloseReason.DEACTIVATION, cur.last)

    def maybe_close(self, t: datetime) -> None:
        """Close the open session if ``t`` (next point or ``as_of``) is past its idle deadline or period."""
        cur = self.cur
        assert cur is not None
        if not self.active:
            deadline = cur.last + self.rules.idle_timeout
            if t > deadline and deadline < cur.period.end:
                self.close(CloseReason.IDLE, cur.last)
                return
        if t < cur.period.end:
            return
        carried = {key: agg for key, (_, agg) in self.active.items()}
        boundary = cur.period.end
        self.close(CloseReason.PERIOD_END, boundary if carried else cur.last)
        if not carried:
            return
        period = period_of(boundary, self.rules.zone)
        while t >= period.end:  # whole periods spent in an active state
            self.carry(period.start, carried)
            self.close(CloseReason.PERIOD_END, period.end)
            period = next_period(period, self.rules.zone)
        self.carry(period.start, carried)

    def settle_states(self, cur: _Open, until: datetime) -> None:
        for (_, product), (since, agg) in self.active.items():
            cur.add_seconds(product, seconds_between(since, max(since, until)), agg)

    def close(self, reason: CloseReason | None, end: datetime, *, as_of: datetime | None = None) -> None:
        cur = self.cur
        assert cur is not None
        if reason is CloseReason.PERIOD_END:
            self.settle_states(cur, cur.period.end)
            self.active = {}
        expires: datetime | None = None
        carry: Carry | None = None
        if reason is None:
            assert as_of is not None
            carry = self.snapshot(cur)
            self.settle_states(cur, min(as_of, cur.period.end))
            expires = cur.period.end if self.active else min(cur.last + self.rules.idle_timeout,
                                                              cur.period.end)
        self.sessions.append(Session(
            account_id=self.account_id, service=self.service, period=cur.period, start=cur.start,
            end=max(end, cur.start), closed_reason=reason, activity_count=cur.count,
            devices=frozenset(cur.devices), partials=cur.partials(), resume=cur.resume, expires_at=expires,
            carry=carry))
        self.cur = None

    def snapshot(self, cur: _Open) -> Carry:
        """The walk state after the last point fed (before any provisional settling)."""
        return Carry(last_key=cur.key() or cur.resume.key, last=cur.last, base=cur.partials(),
                     active=tuple(sorted((d, p, since, agg) for (d, p), (since, agg) in self.active.items())))

    def finish(self, as_of: datetime) -> None:
        if self.cur is not None and not self.active:
            # Closed only because ``as_of`` passed its deadline or period: a later point may still find
            # it so (it closes it the same way), so keep the state to continue from.
            before = self.snapshot(self.cur)
            self.maybe_close(as_of)
            if self.cur is None:
                self.sessions[-1] = replace(self.sessions[-1], carry=before)
        elif self.cur is not None:
            self.maybe_close(as_of)
        cur = self.cur
        if cur is not None:
            end = max(cur.last, min(as_of, cur.period.end)) if self.active else cur.last
            self.close(None, end, as_of=as_of)


def sessionize(points: Iterable[Point], *, account_id: str, service: str, rules: SessionRules,
               as_of: datetime, resume: Resume | None = None) -> list[Session]:
    """The sessions of one account and service from its points, as of ``as_of``.

    With ``resume`` (a stored session's :attr:`Session.resume`, or :func:`resume_for`),
    only points at or after ``resume.key`` count and the walk restarts there:
    the result replaces the stored sessions from that one on.
    """
    as_of = ensure_aware(as_of)
    netted = net_points(points)
    if resume is not None:
        netted = [p for p in netted if sort_key(p) >= resume.key]
    machine = _Machine(account_id, service, rules)
    if resume is not None and resume.active:
        # A session that carried states in always starts at a period boundary.
        machine.carry(resume.key[0], {(device, product): agg for device, product, agg in resume.active})
    for point in sorted(netted, key=sort_key):
        machine.feed(point)
    machine.finish(as_of)
    return machine.sessions


def continue_open(session: Session, points: Iterable[Point], *, rules: SessionRules,
                  as_of: datetime) -> list[Session]:
    """Continue an open session with points that sort after its last one, without replaying its points.

    A session closed by ``as_of`` alone (idle deadline or period end passed, no
    later point) keeps its carry too: the next point closes it the same way, or
    extends it when it comes within the deadline (data stored in arrears).

    Gives exactly what :func:`sessionize` from ``session.resume`` over all the
    points would (points at or before ``carry.last_key`` are ignored: the caller
    takes this path only when every new point sorts after it).
    """
    carry = session.carry
    if carry is None:
        raise ValueError("only an open session (or one closed by as_of alone) can be continued")
    machine = _Machine(session.account_id, session.service, rules)
    machine.active = {(device, product): (since, agg) for device, product, since, agg in carry.active}
    machine.cur = _Open(period=session.period, start=session.start, last=carry.last, resume=session.resume,
                        count=session.activity_count, devices=set(session.devices),
                        aggregations={k: v.aggregation for k, v in carry.base.items()}, base=dict(carry.base),
                        last_key=carry.last_key)
    later = [p for p in net_points(points) if sort_key(p) > carry.last_key]
    for point in sorted(later, key=sort_key):
        machine.feed(point)
    machine.finish(ensure_aware(as_of))
    return machine.sessions


def resume_for(stored: Sequence[Session], earliest: SortKey) -> Resume:
    """Where to recompute from when points at or after ``earliest`` changed.

    ``stored`` are the account's sessions for the service, in order. The answer
    is the last one that starts strictly before ``earliest``; delete it and every
    later stored session, then store :func:`sessionize` of the points from there.
    """
    anchor: Resume | None = None
    for session in stored:
        if session.resume.key < earliest:
            anchor = session.resume
        else:
            break
    return anchor if anchor is not None else Resume(key=earliest)


Machine = _Machine  # the walk, for core.segments (which walks it one segment at a time)
Open = _Open
