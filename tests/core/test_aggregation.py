"""The eight aggregations and the merge law of their partials."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usagehub.core.aggregation import (
    Partial,
    Sample,
    active_seconds,
    aggregate,
    merge_all,
    results,
    seconds_between,
)
from usagehub.core.events import Aggregation

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def s(minute: int, value: str, label: str | None = None) -> Sample:
    return Sample(at=T0 + timedelta(minutes=minute), value=Decimal(value), label=label)


SAMPLES = [s(0, "3"), s(5, "1.5"), s(2, "7"), s(9, "1.5")]


@pytest.mark.parametrize(("aggregation", "expected"), [
    (Aggregation.SUM, Decimal("13")),
    (Aggregation.COUNT, Decimal(4)),
    (Aggregation.MIN, Decimal("1.5")),
    (Aggregation.MAX, Decimal("7")),
    (Aggregation.AVG, Decimal("3.25")),
    (Aggregation.LAST, Decimal("1.5")),
    (Aggregation.UNIQUE_COUNT, Decimal(3)),
])
def test_aggregations(aggregation: Aggregation, expected: Decimal) -> None:
    assert aggregate(aggregation, SAMPLES) == expected


def test_unique_count_counts_labels_when_present() -> None:
    samples = [s(0, "1", "alice"), s(1, "1", "bob"), s(2, "1", "alice")]
    assert aggregate(Aggregation.UNIQUE_COUNT, samples) == 2
    assert aggregate(Aggregation.UNIQUE_COUNT, [s(0, "1.0"), s(1, "1.00")]) == 1  # same value


def test_only_a_unique_count_keeps_labels_so_partials_do_not_grow_with_their_samples() -> None:
    many = [s(i, str(i)) for i in range(500)]  # 500 distinct values, as a meter's month of readings
    total = Partial.of(Aggregation.SUM, many[:250]).merge(Partial.of(Aggregation.SUM, many[250:]))
    assert total.labels == frozenset() and total.result() == sum(Decimal(i) for i in range(500))
    unique = Partial.of(Aggregation.UNIQUE_COUNT, many[:250]).merge(Partial.of(Aggregation.UNIQUE_COUNT, many[200:]))
    assert len(unique.labels) == 500 and unique.result() == 500


def test_empty_aggregations() -> None:
    assert aggregate(Aggregation.SUM, []) == 0
    assert aggregate(Aggregation.COUNT, []) == 0
    assert aggregate(Aggregation.MIN, []) is None
    assert aggregate(Aggregation.AVG, []) is None
    assert aggregate(Aggregation.LAST, []) is None
    assert aggregate(Aggregation.DURATION, [], Decimal(90)) == 90


def test_last_breaks_ties_by_tie() -> None:
    a = Sample(at=T0, value=Decimal(1), tie="a")
    b = Sample(at=T0, value=Decimal(2), tie="b")
    assert aggregate(Aggregation.LAST, [b, a]) == 2


def test_merge_refuses_different_aggregations() -> None:
    with pytest.raises(ValueError, match="cannot merge"):
        Partial(aggregation=Aggregation.SUM).merge(Partial(aggregation=Aggregation.MAX))


def test_active_seconds() -> None:
    on, off = T0 + timedelta(minutes=10), T0 + timedelta(minutes=25)
    assert active_seconds([(on, True), (off, False)], T0, T0 + timedelta(hours=1)) == 900
    # Starting active, a repeated "on", then off; then on again until the window end.
    transitions = [(T0 + timedelta(minutes=5), True), (on, False), (off, True)]
    assert active_seconds(transitions, T0, T0 + timedelta(minutes=30), initially_active=True) == 600 + 300
    # Transitions outside the window are clamped to it.
    assert active_seconds([(T0 - timedelta(hours=1), True)], T0, T0 + timedelta(minutes=1)) == 60
    assert seconds_between(T0, T0 + timedelta(microseconds=1500001)) == Decimal("1.500001")


samples_st = st.lists(st.builds(Sample, at=st.integers(0, 100).map(lambda m: T0 + timedelta(minutes=m)),
                                value=st.decimals(-1000, 1000, places=2),
                                label=st.none() | st.sampled_from(["a", "b", "c"]),
                                tie=st.text("xyz", max_size=2)), max_size=12)


@settings(max_examples=150, deadline=None)
@given(samples=samples_st, cut=st.integers(0, 12), aggregation=st.sampled_from(list(Aggregation)))
def test_merging_partials_equals_aggregating_the_union(samples: list[Sample], cut: int,
                                                       aggregation: Aggregation) -> None:
    whole = Partial.of(aggregation, samples, Decimal(7))
    left = Partial.of(aggregation, samples[:cut], Decimal(3))
    right = Partial.of(aggregation, samples[cut:], Decimal(4))
    assert left.merge(right).result() == whole.result() == right.merge(left).result()
    assert merge_all([left, right], aggregation).result() == whole.result()
    assert results({"m": whole}) == {"m": whole.result()}
