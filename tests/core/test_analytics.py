"""Pure analytics: bucket alignment, features, rule language and membership diffs."""

from __future__ import annotations

import contextlib
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usagehub.core.analytics import (
    Bucket,
    DayUsage,
    LedgerEntry,
    RuleError,
    bucket_start,
    compute_account_features,
    compute_usage_features,
    diff_members,
    evaluate,
    floor_quarter,
    parse_rule,
    pseudonym,
    to_sql,
)

FIELDS = {"evening_share": "number", "mom_trend": "number", "avg_daily": "number", "market": "text"}
ZONES = [ZoneInfo(z) for z in ("Europe/Berlin", "Asia/Kathmandu", "America/St_Johns", "Australia/Lord_Howe", "UTC")]
instants = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1),
                        timezones=st.just(UTC))


@settings(max_examples=300)
@given(ts=instants, zone=st.sampled_from(ZONES), bucket=st.sampled_from(list(Bucket)))
def test_bucket_contains_instant_and_quarters_align_in_every_zone(ts: datetime, zone: ZoneInfo,
                                                                   bucket: Bucket) -> None:
    start = bucket_start(ts, zone, bucket)
    assert start <= ts
    assert bucket_start(start, zone, bucket) == start  # a bucket start is its own bucket's start
    quarter = floor_quarter(ts)
    assert quarter.astimezone(zone).minute % 15 == 0  # UTC quarters are local quarters


def test_features_of_a_falling_evening_household() -> None:
    as_of = date(2026, 10, 31)
    days = [DayUsage(day=as_of - timedelta(days=i), quantity=Decimal(6 if i < 30 else 10)) for i in range(60)]
    hours = [Decimal(0)] * 24
    hours[19], hours[7] = Decimal(3), Decimal(1)
    f = compute_usage_features(as_of=as_of, days=days, hour_totals=hours, first_day=as_of - timedelta(days=59))
    assert (f.avg_daily, f.peak_daily, f.mom_trend, f.volatility) == (Decimal(6), Decimal(6), Decimal("-0.4"),
                                                                     Decimal(0))
    assert (f.evening_share, f.morning_share, f.weekend_ratio) == (Decimal("0.75"), Decimal("0.25"), Decimal(1))
    young = compute_usage_features(as_of=as_of, days=days[:5], hour_totals=hours, first_day=as_of - timedelta(days=4))
    assert young.days == 5 and young.mom_trend is None  # no full previous month: no trend
    empty = compute_usage_features(as_of=as_of, days=[], hour_totals=[Decimal(0)] * 24, first_day=None)
    assert empty.avg_daily is None and empty.evening_share is None


def test_prepaid_features_and_days_near_zero() -> None:
    as_of = date(2026, 10, 31)
    entries = [LedgerEntry(day=date(2026, 10, 10), kind="topup", amount=Decimal(20), balance_after=Decimal(20)),
               LedgerEntry(day=date(2026, 10, 11), kind="usage", amount=Decimal("-19.5"), balance_after=Decimal("0.5")),
               LedgerEntry(day=date(2026, 10, 13), kind="topup", amount=Decimal(30), balance_after=Decimal("30.5"))]
    f = compute_account_features(as_of=as_of, entries=entries, opening_balance=None, activity=3)
    assert (f.topups, f.topup_typical, f.days_near_zero, f.activity) == (2, Decimal(25), 3, 3)  # 11th-13th
    none = compute_account_features(as_of=as_of, entries=[], opening_balance=None, activity=0)
    assert (none.topups, none.topup_typical, none.days_near_zero) == (0, None, 0)
    assert compute_account_features(as_of=as_of, entries=[], opening_balance=Decimal(0),
                                    activity=0).days_near_zero == 30


@pytest.mark.parametrize(("text", "position", "words"), [
    ("evening_share >= ", 17, "expected a number"),
    ("evening_share >= 0.4 and", 24, "expected a number"),
    ("evening_shar > 1", 0, "unknown feature 'evening_shar'"),
    ("evening_share > 'x'", 16, "compares a number"),
    ("avg_daily + 1", 10, "must be a condition"),
    ("(avg_daily > 1", 14, "expected ')'"),
    ("avg_daily > 1 ; drop table x", 14, "unexpected character ';'"),
    ("market = 'DE", 9, "not closed"),
    ("avg_daily > 1 and 2", 18, "joins conditions"),
])
def test_rule_errors_name_the_position(text: str, position: int, words: str) -> None:
    with pytest.raises(RuleError) as err:
        parse_rule(text, FIELDS)
    assert err.value.position == position and words in str(err.value)
    assert err.value.code == "BAD_RULE"


def test_rules_evaluate_in_three_valued_logic_and_compile_to_bound_sql() -> None:
    rule = parse_rule("evening_share >= 40% and mom_trend <= -0.2 or market == 'FR'", FIELDS)
    assert evaluate(rule, {"evening_share": Decimal("0.5"), "mom_trend": Decimal("-0.3")}) is True
    assert evaluate(rule, {"evening_share": Decimal("0.5"), "market": "DE"}) is None  # unknown: not a member
    assert evaluate(rule, {"market": "FR"}) is True
    sql, params = to_sql(rule, {k: f"t.{k}" for k in FIELDS})
    assert "'" not in sql and params == [Decimal("0.4"), Decimal("0.2"), "FR"]
    assert evaluate(parse_rule("avg_daily / 0 > 1 or avg_daily is null", FIELDS), {"avg_daily": Decimal(1)}) is None


@settings(max_examples=200)
@given(st.text(max_size=40))
def test_hostile_rule_text_only_raises_rule_error(text: str) -> None:
    with contextlib.suppress(RuleError):
        parse_rule(text, FIELDS)


@given(st.sets(st.text(max_size=3)), st.sets(st.text(max_size=3)))
def test_membership_diff_rebuilds_current_from_previous(before: set[str], after: set[str]) -> None:
    d = diff_members(before, after)
    assert (before - set(d.left)) | set(d.entered) == after == set(d.members)
    assert not set(d.entered) & set(d.left)


def test_pseudonyms_are_keyed_and_stable() -> None:
    a, b = b"k" * 32, b"j" * 32
    assert pseudonym("acc", a) == pseudonym("acc", a) != pseudonym("acc", b)
    assert len(pseudonym("acc", a)) == 18 and "acc" not in pseudonym("acc", a)[2:]
