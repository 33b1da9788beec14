"""A session's partials from its points equal ``Partial.of`` over full samples (every sample with its tie)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from usagehub.core.aggregation import Partial, Sample
from usagehub.core.allocation import Point, PointKind
from usagehub.core.events import Aggregation
from usagehub.core.sessions import partial_of_points

T0 = datetime(2026, 3, 31, 21, tzinfo=UTC)


def full_samples(points: list[Point]) -> list[Sample]:
    """How the walk built samples before: the tie of every one."""
    return [Sample(at=p.end, value=p.value, label=p.label, tie=f"{p.start.isoformat()}|{p.device_id}|{p.tie}")
            for p in points]


@st.composite
def fed_points(draw: st.DrawFn) -> list[Point]:
    """Points of one product: few instants (so many share the latest), devices, ties, labels, equal values."""
    out = []
    for _ in range(draw(st.integers(0, 12))):
        start = T0 + timedelta(minutes=draw(st.integers(0, 3)) * 15)
        end = start + timedelta(minutes=draw(st.sampled_from([0, 15, 30])))
        out.append(Point(account_id="t1-acc", service="s", device_id=draw(st.sampled_from(["d1", "d2", "d10"])),
                         product="p", kind=draw(st.sampled_from(list(PointKind))), aggregation=Aggregation.SUM,
                         start=start, end=end, value=Decimal(draw(st.sampled_from(["0", "1.5", "-2", "1.50", "7"]))),
                         label=draw(st.sampled_from([None, "card-1", "card-2"])),
                         tie=draw(st.sampled_from(["", "e1", "e2"]))))
    return out


@given(points=fed_points(), aggregation=st.sampled_from(list(Aggregation)),
       seconds=st.sampled_from([Decimal(0), Decimal("12.5")]))
def test_partial_of_points_equals_partial_of_full_samples(points: list[Point], aggregation: Aggregation,
                                                          seconds: Decimal) -> None:
    assert partial_of_points(aggregation, points, seconds) == Partial.of(aggregation, full_samples(points), seconds)
