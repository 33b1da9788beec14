"""Billing periods in local zones (DST included) and the proportional split rule."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usagehub.core.periods import (
    Part,
    boundaries_within,
    ensure_aware,
    next_period,
    period_of,
    split_interval,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
ZONES = [ZoneInfo(z) for z in ("UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe",
                               "America/Santiago", "Asia/Kathmandu", "Pacific/Apia", "America/Havana")]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_berlin_month_starts_at_local_midnight() -> None:
    # 2026-03-01 00:00 CET = 2026-02-28 23:00 UTC; April starts in CEST (UTC+2).
    period = period_of(utc(2026, 3, 15), BERLIN)
    assert (period.start, period.end, period.label) == (utc(2026, 2, 28, 23), utc(2026, 3, 31, 22), "2026-03")
    assert period_of(utc(2026, 2, 28, 22, 59, 59), BERLIN).label == "2026-02"
    assert period_of(utc(2026, 2, 28, 23), BERLIN).label == "2026-03"


def test_new_york_across_dst() -> None:
    # DST starts 2026-03-08 and ends 2026-11-01: November starts at 04:00 UTC (EDT), December at 05:00.
    november = period_of(utc(2026, 11, 15), NEW_YORK)
    assert (november.start, november.end) == (utc(2026, 11, 1, 4), utc(2026, 12, 1, 5))
    assert november.end - november.start == timedelta(days=30, hours=1)
    march = period_of(utc(2026, 3, 15), NEW_YORK)
    assert march.end - march.start == timedelta(days=31) - timedelta(hours=1)
    assert next_period(march, NEW_YORK).start == march.end


def test_naive_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        ensure_aware(datetime(2026, 1, 1))
    assert ensure_aware(datetime(2026, 1, 1, 1, tzinfo=BERLIN)) == utc(2026, 1, 1)


@settings(max_examples=300, deadline=None)
@given(ts=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2060, 1, 1),
                      timezones=st.just(UTC)),
       zone=st.sampled_from(ZONES))
def test_periods_are_contiguous_and_contain_their_instant(ts: datetime, zone: ZoneInfo) -> None:
    period = period_of(ts, zone)
    assert period.contains(ts)
    assert next_period(period, zone).start == period.end
    assert period_of(period.start, zone) == period
    assert period_of(period.end - timedelta(microseconds=1), zone) == period
    assert timedelta(days=27) < period.end - period.start < timedelta(days=32)


def test_boundaries_within() -> None:
    cuts = boundaries_within(utc(2026, 1, 15), utc(2026, 4, 1), ZoneInfo("UTC"))
    assert cuts == [utc(2026, 2, 1), utc(2026, 3, 1)]  # 04-01 is the end, not strictly inside
    assert boundaries_within(utc(2026, 1, 15), utc(2026, 1, 20), BERLIN) == []


def test_split_is_proportional_to_time() -> None:
    # 10 kWh over 20:00..04:00 UTC across the Berlin March boundary (23:00 UTC): 3 h before, 5 h after.
    parts = split_interval(Decimal(10), utc(2026, 2, 28, 20), utc(2026, 3, 1, 4), [utc(2026, 2, 28, 23)])
    assert parts == [
        Part(start=utc(2026, 2, 28, 20), end=utc(2026, 2, 28, 23), quantity=Decimal("3.750000000")),
        Part(start=utc(2026, 2, 28, 23), end=utc(2026, 3, 1, 4), quantity=Decimal("6.250000000"))]


def test_split_remainder_goes_to_the_last_part() -> None:
    cuts = [utc(2026, 1, 1, 1), utc(2026, 1, 1, 2)]
    parts = split_interval(Decimal(1), utc(2026, 1, 1), utc(2026, 1, 1, 3), cuts)
    assert [p.quantity for p in parts] == [Decimal(x) for x in ("0.333333333", "0.333333333", "0.333333334")]


def test_split_ignores_outside_cuts_and_zero_length() -> None:
    t = utc(2026, 1, 1)
    assert split_interval(Decimal(5), t, t, [t]) == [Part(start=t, end=t, quantity=Decimal(5))]
    assert len(split_interval(Decimal(5), t, t + timedelta(hours=1), [t, t + timedelta(hours=2)])) == 1


@settings(max_examples=200, deadline=None)
@given(q=st.decimals(min_value=-10**9, max_value=10**9, places=3),
       length=st.integers(1, 10**7), cuts=st.lists(st.integers(0, 10**7), max_size=5))
def test_split_sums_exactly_and_negates_exactly(q: Decimal, length: int, cuts: list[int]) -> None:
    start = utc(2026, 1, 1)
    end = start + timedelta(seconds=length)
    at = [start + timedelta(seconds=c) for c in cuts]
    parts = split_interval(q, start, end, at)
    assert sum(p.quantity for p in parts) == q
    assert [p.quantity for p in split_interval(-q, start, end, at)] == [-p.quantity for p in parts]
    assert all(a.end == b.start for a, b in itertools.pairwise(parts))
