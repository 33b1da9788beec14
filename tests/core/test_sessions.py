"""Sessions: opening, closing (deactivation, idle, period end), merging, determinism, recomputation."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import hypothesis
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from usagehub.core.allocation import Point, PointKind, net_points
from usagehub.core.events import Aggregation
from usagehub.core.sessions import (
    CloseReason,
    Machine,
    Resume,
    Session,
    SessionRules,
    SortKey,
    continue_open,
    resume_for,
    sessionize,
    sort_key,
)

UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 3, 10, 10, tzinfo=UTC)
HOUR = timedelta(hours=1)
RULES = SessionRules(idle_timeout=HOUR, zone=UTC_ZONE)


def usage(at: datetime, value: str = "1", device: str = "d1", product: str = "energy",
          end: datetime | None = None) -> Point:
    return Point(account_id="acc", service="power", device_id=device, product=product, kind=PointKind.USAGE,
                 aggregation=Aggregation.SUM, start=at, end=end or at, value=Decimal(value))


def gauge(at: datetime, value: str, device: str = "d1") -> Point:
    return Point(account_id="acc", service="power", device_id=device, product="power", kind=PointKind.GAUGE,
                 aggregation=Aggregation.MAX, start=at, end=at, value=Decimal(value), tie=f"g{at}{value}")


def state(at: datetime, active: bool, device: str = "d1", product: str = "armed") -> Point:
    return Point(account_id="acc", service="power", device_id=device, product=product, kind=PointKind.STATE,
                 aggregation=Aggregation.DURATION, start=at, end=at, value=Decimal(int(active)),
                 active=active, tie=f"s{at}{active}")


def run(points: list[Point], as_of: datetime, rules: SessionRules = RULES,
        resume: Resume | None = None) -> list[Session]:
    return sessionize(points, account_id="acc", service="power", rules=rules, as_of=as_of, resume=resume)


def m(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# --- examples ---------------------------------------------------------------------------------

def test_idle_timeout_splits_sessions() -> None:
    points = [usage(m(0), "2"), usage(m(30), "3"), usage(m(200), "5")]
    first, second = run(points, as_of=m(210))
    assert (first.start, first.end, first.closed_reason) == (m(0), m(30), CloseReason.IDLE)
    assert first.aggregates == {"energy": Decimal(5)} and first.activity_count == 2
    assert first.duration_s == 1800
    assert (second.start, second.closed_reason, second.expires_at) == (m(200), None, m(260))
    [*_, later] = run(points, as_of=m(261))
    assert later.closed_reason is CloseReason.IDLE
    # A gap of exactly the timeout does not break a session.
    assert len(run([usage(m(0)), usage(m(60))], as_of=m(61))) == 1


def test_activation_and_deactivation_bound_a_session() -> None:
    points = [state(m(0), True), usage(m(10), "4"), gauge(m(20), "7"), gauge(m(25), "9"),
              state(m(150), False)]
    [session] = run(points, as_of=m(400))
    assert (session.start, session.end, session.closed_reason) == (m(0), m(150), CloseReason.DEACTIVATION)
    # An active state suspends the idle timeout (130 minutes without events).
    assert session.aggregates == {"armed": Decimal(9000), "energy": Decimal(4), "power": Decimal(9)}


def test_zero_usage_and_repeated_off_open_nothing() -> None:
    assert run([usage(m(0), "0"), state(m(5), False)], as_of=m(500)) == []
    [session] = run([usage(m(0), "1"), state(m(5), False), state(m(6), True), state(m(7), True),
                     state(m(9), False)], as_of=m(500))
    assert session.activity_count == 3  # usage, on, off; the repeated off and on are not activity
    assert session.aggregates["armed"] == 180
    assert session.closed_reason is CloseReason.DEACTIVATION


def test_devices_of_an_account_merge_into_one_session() -> None:
    points = [usage(m(0), "1", device="d1"), usage(m(40), "2", device="legacy-7"),
              usage(m(90), "3", device="d1")]
    [session] = run(points, as_of=m(100))
    assert session.devices == frozenset({"d1", "legacy-7"}) and session.aggregates == {"energy": Decimal(6)}


def test_state_stays_active_until_every_device_is_off() -> None:
    points = [state(m(0), True, "d1"), state(m(10), True, "d2"), state(m(20), False, "d1"),
              state(m(50), False, "d2")]
    [session] = run(points, as_of=m(100))
    assert (session.end, session.closed_reason) == (m(50), CloseReason.DEACTIVATION)
    assert session.aggregates == {"armed": Decimal(20 * 60 + 40 * 60)}  # device-time, summed


def test_state_durations_split_at_a_berlin_period_boundary() -> None:
    # April starts in Berlin at 2026-03-31 22:00 UTC (CEST).
    boundary = datetime(2026, 3, 31, 22, tzinfo=UTC)
    rules = SessionRules(idle_timeout=HOUR, zone=BERLIN)
    points = [state(boundary - 2 * HOUR, True), state(boundary + 4 * HOUR, False)]
    march, april = run(points, as_of=boundary + 10 * HOUR, rules=rules)
    assert (march.start, march.end, march.closed_reason) == (boundary - 2 * HOUR, boundary,
                                                             CloseReason.PERIOD_END)
    assert (march.period.label, april.period.label) == ("2026-03", "2026-04")
    assert march.aggregates == {"armed": Decimal(7200)}
    assert (april.start, april.end, april.closed_reason) == (boundary, boundary + 4 * HOUR,
                                                             CloseReason.DEACTIVATION)
    assert april.aggregates == {"armed": Decimal(14400)}
    assert april.resume == Resume(key=(boundary, -1, boundary, "", "", "", ""),
                                  active=frozenset({("d1", "armed", Aggregation.DURATION)}))


def test_state_active_over_whole_periods_in_new_york() -> None:
    ny = ZoneInfo("America/New_York")
    on = datetime(2026, 1, 20, tzinfo=UTC)
    rules = SessionRules(idle_timeout=HOUR, zone=ny)
    sessions = run([state(on, True), state(datetime(2026, 4, 2, tzinfo=UTC), False)],
                   as_of=datetime(2026, 5, 1, tzinfo=UTC), rules=rules)
    assert [s.period.label for s in sessions] == ["2026-01", "2026-02", "2026-03", "2026-04"]
    assert [s.closed_reason for s in sessions] == [CloseReason.PERIOD_END] * 3 + [CloseReason.DEACTIVATION]
    february = sessions[1]
    assert february.aggregates["armed"] == 28 * 86400
    march = sessions[2]  # DST: March in New York is one hour short
    assert march.aggregates["armed"] == 31 * 86400 - 3600
    assert sum(s.aggregates["armed"] or 0 for s in sessions) == Decimal((datetime(2026, 4, 2, tzinfo=UTC)
                                                                          - on).total_seconds())


def test_open_state_session_as_of() -> None:
    [session] = run([state(m(0), True)], as_of=m(90))
    assert (session.closed_reason, session.end, session.expires_at) == (None, m(90), datetime(2026, 4, 1,
                                                                                            tzinfo=UTC))
    assert session.aggregates == {"armed": Decimal(5400)}
    # Carried into a new period that is still open.
    sessions = run([state(m(0), True)], as_of=datetime(2026, 4, 2, tzinfo=UTC))
    assert [(s.period.label, s.closed_reason) for s in sessions] == [("2026-03", CloseReason.PERIOD_END),
                                                                     ("2026-04", None)]


def test_usage_session_closes_at_period_end() -> None:
    end = datetime(2026, 4, 1, tzinfo=UTC)
    points = [usage(end - timedelta(minutes=20)), usage(end + timedelta(minutes=10))]
    march, april = run(points, as_of=end + HOUR)
    assert (march.end, march.closed_reason) == (end - timedelta(minutes=20), CloseReason.PERIOD_END)
    assert april.start == end + timedelta(minutes=10)
    # The idle deadline falls before the boundary: closed as idle.
    [march] = run([usage(end - 2 * HOUR)], as_of=end + HOUR)
    assert march.closed_reason is CloseReason.IDLE


def test_usage_interval_extends_the_session() -> None:
    [session] = run([usage(m(0), "1", end=m(300)), usage(m(340), "1")], as_of=m(350))
    assert (session.start, session.end) == (m(0), m(340))


def test_resume_for_picks_the_last_session_before() -> None:
    points = [usage(m(0)), usage(m(200)), usage(m(400))]
    stored = run(points, as_of=m(500))
    assert resume_for(stored, sort_key(usage(m(250)))) == stored[1].resume
    assert resume_for(stored, sort_key(usage(m(200)))) == stored[0].resume
    early = sort_key(usage(m(-5)))
    assert resume_for(stored, early) == Resume(key=early)


# --- properties -------------------------------------------------------------------------------

BOUNDARY = datetime(2026, 3, 31, 22, tzinfo=UTC)  # Berlin, April
BERLIN_RULES = SessionRules(idle_timeout=HOUR, zone=BERLIN)


@st.composite
def point_sets(draw: st.DrawFn) -> list[Point]:
    out: dict[tuple[object, ...], Point] = {}
    for _ in range(draw(st.integers(0, 30))):
        at = BOUNDARY + timedelta(minutes=10 * draw(st.integers(-40, 40)))
        if draw(st.integers(0, 20)) == 0:
            at += timedelta(days=draw(st.integers(1, 70)))  # far: whole periods in between
        device = draw(st.sampled_from(["d1", "d2", "d3"]))
        kind = draw(st.sampled_from(list(PointKind)))
        if kind is PointKind.USAGE:
            span = timedelta(minutes=10 * draw(st.integers(0, 12)))
            p = usage(at, str(draw(st.integers(-2, 5))), device, end=at + span)
        elif kind is PointKind.GAUGE:
            p = gauge(at, str(draw(st.integers(0, 9))), device)
        else:
            p = state(at, draw(st.booleans()), device)
        out.setdefault(sort_key(p)[:6], p)  # one usage point per span, like netted entries
    return list(out.values())


def _arrivals(points: list[Point], rng: random.Random) -> list[Point]:
    """Points as storage may hold them: shuffled, events duplicated, usage split into retractions."""
    out: list[Point] = []
    for p in points:
        if p.kind is PointKind.USAGE and rng.random() < 0.5:
            extra = Decimal(rng.randint(1, 9))
            out += [replace(p, value=p.value + extra), replace(p, value=-extra)]
        elif p.kind is PointKind.USAGE:
            out.append(p)  # entries are never duplicated: readings are de-duplicated before
        else:
            out += [p] * rng.randint(1, 2)
    rng.shuffle(out)
    return out


AS_OF = BOUNDARY + timedelta(days=90)


@settings(max_examples=120, deadline=None)
@given(points=point_sets(), seed=st.integers(0, 2**32))
def test_sessions_are_invariant_to_arrival_order_duplication_and_retraction(points: list[Point],
                                                                             seed: int) -> None:
    expected = run(points, AS_OF, BERLIN_RULES)
    assert run(_arrivals(points, random.Random(seed)), AS_OF, BERLIN_RULES) == expected
    for a, b in itertools.pairwise(expected):
        # (a usage span reported across a deactivation may end after the next session starts)
        assert a.start <= b.start and a.closed_reason is not None
        assert a.period <= b.period


class _CheckEveryPoint(Machine):
    """The walk as it was: the idle and period checks (``maybe_close``) before every point fed."""

    def feed(self, point: Point) -> None:
        if self.cur is not None:
            self.maybe_close(point.start)
        activity = self.is_activity(point)
        if self.cur is None:
            if not activity:
                return
            self.open(point.start, Resume(key=sort_key(point)))
        self.add(point, activity)


@settings(max_examples=120, deadline=None)
@given(points=point_sets(), idle=st.sampled_from([timedelta(minutes=5), HOUR, timedelta(hours=30)]))
def test_feed_skips_the_close_check_only_where_it_would_do_nothing(points: list[Point], idle: timedelta) -> None:
    # Machine.feed calls maybe_close only past the period's end or the idle deadline: the same sessions as
    # checking before every point (idle gaps, period ends, states carried over whole periods).
    rules = SessionRules(idle_timeout=idle, zone=BERLIN)
    reference = _CheckEveryPoint("acc", "power", rules)
    for point in sorted(net_points(points), key=sort_key):
        reference.feed(point)
    reference.finish(AS_OF)
    assert run(points, AS_OF, rules) == reference.sessions


@settings(max_examples=120, deadline=None)
@given(points=point_sets())
def test_recomputing_from_any_stored_session_gives_the_same_tail(points: list[Point]) -> None:
    full = run(points, AS_OF, BERLIN_RULES)
    for k, session in enumerate(full):
        assert run(points, AS_OF, BERLIN_RULES, resume=session.resume) == full[k:]


@settings(max_examples=120, deadline=None)
@given(points=point_sets(), seed=st.integers(0, 2**32))
def test_incremental_merge_is_independent_of_how_device_streams_interleave(points: list[Point],
                                                                            seed: int) -> None:
    """The lead's procedure: per batch, recompute from resume_for(stored, earliest) and splice."""
    rng = random.Random(seed)
    streams = {d: sorted((p for p in points if p.device_id == d), key=sort_key) for d in ("d1", "d2", "d3")}
    arrivals: list[Point] = []
    while any(streams.values()):
        device = rng.choice([d for d, s in streams.items() if s])
        take = rng.randint(1, 3)
        arrivals += streams[device][:take]
        streams[device] = streams[device][take:]
    stored: list[Session] = []
    seen: list[Point] = []
    while arrivals:
        size = rng.randint(1, 4)
        batch, arrivals = arrivals[:size], arrivals[size:]
        seen += batch
        stored = _splice(stored, seen, min(sort_key(p) for p in batch),
                         as_of=max(p.start for p in seen) + timedelta(minutes=rng.randint(0, 90)))
    if stored:  # the sweep that closes what went idle since the last batch
        stored = _splice(stored, seen, stored[-1].resume.key, as_of=AS_OF)
    assert stored == run(points, AS_OF, BERLIN_RULES)


def _splice(stored: list[Session], seen: list[Point], earliest: SortKey, *,
            as_of: datetime) -> list[Session]:
    resume = resume_for(stored, earliest)
    kept = [s for s in stored if s.resume.key < resume.key]
    return kept + run(seen, as_of, BERLIN_RULES, resume=resume)


@settings(max_examples=400, deadline=None)
@given(points=point_sets(), cut=st.integers(0, 40), lag=st.integers(0, 600), seed=st.integers(0, 2**32))
def test_continuing_an_open_session_equals_replaying_it(points: list[Point], cut: int, lag: int,
                                                        seed: int) -> None:
    """Stored open session + later points (continue_open) == sessionize over everything."""
    ordered = sorted(points, key=sort_key)
    head, tail = ordered[:cut], ordered[cut:]
    if not head:
        return
    as_of = head[-1].start + timedelta(minutes=lag)
    stored = run(head, as_of, BERLIN_RULES)
    expected = run(points, AS_OF, BERLIN_RULES)
    carry = stored[-1].carry if stored else None
    if carry is None or (tail and sort_key(tail[0]) <= carry.last_key):
        return  # storage takes the replay path then
    hypothesis.event(f"continued {stored[-1].closed_reason} with {min(len(tail), 3)}+ points")
    arrived = _arrivals(tail, random.Random(seed))  # shuffled, retractions, duplicates among the new points
    assert stored[:-1] + continue_open(stored[-1], arrived, rules=BERLIN_RULES, as_of=AS_OF) == expected


def test_only_sessions_closed_by_as_of_alone_continue() -> None:
    first, second = run([usage(m(0)), usage(m(200))], m(300))
    assert first.closed_reason is CloseReason.IDLE and first.carry is None  # closed by a later point: final
    assert second.closed_reason is CloseReason.IDLE and second.carry is not None  # by as_of: may continue
    assert continue_open(second, [usage(m(230))], rules=RULES, as_of=m(280))[0].closed_reason is None
    closed = first
    try:
        continue_open(closed, [usage(m(400))], rules=RULES, as_of=m(500))
    except ValueError as err:
        assert "can be continued" in str(err)
    else:
        raise AssertionError("a closed session was continued")
