"""Rating: plan selection, components, plan changes mid-period, determinism and order invariance."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal as D
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usagehub.core.calendars import BillingPeriod, cut_period
from usagehub.core.money import exact
from usagehub.core.rating import Account, RatedLine, UsageItem, diff_lines, rate, rate_adjustment
from usagehub.core.tariffs import PlanBook, parse_plans
from usagehub.core.tiers import graduated_split
from usagehub.errors import DomainError

BERLIN = ZoneInfo("Europe/Berlin")
PERIOD = BillingPeriod(start=datetime(2024, 3, 1, tzinfo=BERLIN), end=datetime(2024, 4, 1, tzinfo=BERLIN))
ACCOUNT = Account(account_id="a1", market="DE", currency="EUR", timezone="Europe/Berlin")


def book(usage: str, *, change: str | None = None, extra: str = "") -> PlanBook:
    """A DE electricity plan with ``usage`` as its usage price; ``change`` adds a version from 2024-03-16."""
    versions = f"""
      - valid_from: 2024-01-01
        {"valid_to: 2024-03-16" if change else ""}
        components:
          - {usage}
          {extra}
"""
    if change:
        versions += f"""
      - valid_from: 2024-03-16
        components:
          - {change}
"""
    return parse_plans(
        f"""
calendars:
  de: [2024-03-29, 2024-04-01]
plans:
  - id: p1
    product: electricity
    market: DE
    currency: EUR
    unit: kWh
    versions:{versions}""",
        "test.yaml",
    )


GRADUATED = (
    '{type: graduated, tiers: [{up_to: 100, price: "0.30"}, {up_to: 300, price: "0.25"}, {price: "0.20"}]}'
)
GRADUATED_2 = (
    '{type: graduated, tiers: [{up_to: 100, price: "0.32"}, {up_to: 300, price: "0.27"}, {price: "0.22"}]}'
)
VOLUME = '{type: volume, tiers: [{up_to: 100, price: "0.30"}, {up_to: 300, price: "0.25"}, {price: "0.20"}]}'
VOLUME_2 = (
    '{type: volume, tiers: [{up_to: 100, price: "0.40"}, {up_to: 300, price: "0.35"}, {price: "0.30"}]}'
)
TOU = (
    '{type: tou, calendar: de, default: {name: off, price: "0.20"}, windows: ['
    '{name: peak, price: "0.40", days: [mon, tue, wed, thu, fri], start: "08:00", end: "20:00"}, '
    '{name: holiday, price: "0.10", days: [holiday], start: "00:00", end: "24:00"}]}'
)
FLAT = '{type: flat, price: "0.30"}'


def item(ts: datetime, qty: str | D, record: str = "r", product: str = "electricity") -> UsageItem:
    return UsageItem(
        account_id="a1",
        product=product,
        ts=ts,
        quantity=D(qty),
        unit="kWh",
        record_id=record,
        event_ids=(f"{record}-e",),
    )


def at(day: int, hour: int = 12) -> datetime:
    return datetime(2024, 3, day, hour, tzinfo=BERLIN)


def net(lines: list[RatedLine]) -> D:
    with exact():
        return sum((ln.net.amount for ln in lines), D(0))


def test_flat_and_legacy_and_modern_devices_alike() -> None:
    lines = rate(
        [item(at(2), "10", "legacy-panel"), item(at(3), "5", "smart-meter")], book(FLAT), ACCOUNT, PERIOD
    )
    assert [(ln.component, ln.quantity, ln.net.amount, ln.record_ids) for ln in lines] == [
        ("flat", 15, D("4.50"), ("legacy-panel", "smart-meter"))
    ]
    assert lines[0].event_ids == ("legacy-panel-e", "smart-meter-e")
    assert lines[0].supply_from == PERIOD.start and lines[0].supply_to == PERIOD.end


def test_graduated_fills_bands_across_items() -> None:
    lines = rate([item(at(2), "90", "a"), item(at(3), "250", "b")], book(GRADUATED), ACCOUNT, PERIOD)
    assert [(ln.detail, ln.quantity, ln.net.amount, ln.record_ids) for ln in lines] == [
        ("tier 1 (0-100)", 90 + 10, D("30.00"), ("a", "b")),
        ("tier 2 (100-300)", 200, D("50.00"), ("b",)),
        ("tier 3 (300+)", 40, D("8.00"), ("b",)),
    ]


def test_volume_prices_every_unit_at_the_band_of_the_total() -> None:
    lines = rate([item(at(2), "100"), item(at(3), "0.5")], book(VOLUME), ACCOUNT, PERIOD)
    assert [(ln.detail, ln.quantity, ln.unit_price.amount, ln.net.amount) for ln in lines] == [
        ("tier 2 (100-300)", D("100.5"), D("0.25"), D("25.125"))
    ]
    exactly_100 = rate([item(at(2), "100")], book(VOLUME), ACCOUNT, PERIOD)
    assert exactly_100[0].unit_price.amount == D("0.30")  # up_to is inclusive


def test_volume_across_a_plan_change_uses_the_period_total() -> None:
    lines = rate([item(at(2), "80"), item(at(20), "80")], book(VOLUME, change=VOLUME_2), ACCOUNT, PERIOD)
    assert [(ln.plan_version, ln.detail, ln.quantity, ln.net.amount) for ln in lines] == [
        ("2024-01-01", "tier 2 (100-300)", 80, D("20.00")),
        ("2024-03-16", "tier 2 (100-300)", 80, D("28.00")),
    ]


def test_graduated_across_a_plan_change_continues_cumulatively() -> None:
    lines = rate(
        [item(at(2), "80"), item(at(20), "80")], book(GRADUATED, change=GRADUATED_2), ACCOUNT, PERIOD
    )
    assert [(ln.plan_version, ln.detail, ln.quantity, ln.net.amount) for ln in lines] == [
        ("2024-01-01", "tier 1 (0-100)", 80, D("24.00")),
        ("2024-03-16", "tier 1 (0-100)", 20, D("6.40")),
        ("2024-03-16", "tier 2 (100-300)", 60, D("16.20")),
    ]
    assert lines[1].supply_from == datetime(2024, 3, 16, tzinfo=BERLIN)


def test_time_of_use_by_local_time_weekday_and_holiday() -> None:
    utc = ZoneInfo("UTC")
    items = [
        item(datetime(2024, 3, 4, 7, 30, tzinfo=utc), "1", "mon-0830-local"),  # 08:30 Berlin, Monday: peak
        item(datetime(2024, 3, 4, 6, 59, tzinfo=utc), "2", "mon-0759-local"),  # 07:59 Berlin: default
        item(datetime(2024, 3, 9, 12, tzinfo=utc), "4", "saturday"),  # no weekend window: default
        item(datetime(2024, 3, 29, 12, tzinfo=utc), "8", "good-friday"),  # holiday beats Friday peak
    ]
    lines = rate(items, book(TOU), ACCOUNT, PERIOD)
    assert [(ln.detail, ln.quantity, ln.net.amount, ln.record_ids) for ln in lines] == [
        ("peak", 1, D("0.40"), ("mon-0830-local",)),
        ("holiday", 8, D("0.80"), ("good-friday",)),
        ("off", 6, D("1.20"), ("mon-0759-local", "saturday")),
    ]


def test_tou_without_default_refuses_uncovered_time() -> None:
    plans = book(
        '{type: tou, windows: [{name: peak, price: "1", days: [mon], start: "00:00", end: "24:00"}]}'
    )
    assert rate([item(at(4), "1")], plans, ACCOUNT, PERIOD)[0].detail == "peak"  # 4 March 2024 is a Monday
    with pytest.raises(DomainError) as err:
        rate([item(at(5), "1")], plans, ACCOUNT, PERIOD)
    assert err.value.code == "TOU_UNCOVERED"


def test_standing_charge_per_day_and_per_period() -> None:
    per_day = rate(
        [],
        book(FLAT, extra='- {type: standing_charge, amount: "0.50", per: day}'),
        Account(
            account_id="a1",
            market="DE",
            currency="EUR",
            timezone="Europe/Berlin",
            products=frozenset({"electricity"}),
        ),
        PERIOD,
    )
    assert [(ln.component, ln.quantity, ln.net.amount) for ln in per_day] == [
        ("standing_charge", 31, D("15.50"))
    ]
    subscribed = Account(
        account_id="a1",
        market="DE",
        currency="EUR",
        timezone="Europe/Berlin",
        products=frozenset({"electricity"}),
    )
    whole = rate([], book(FLAT, extra='- {type: standing_charge, amount: "10.00"}'), subscribed, PERIOD)
    assert whole[0].net.amount == D("10.00")  # the whole period: exact, not 9.99999...
    assert rate([], book(FLAT, extra='- {type: standing_charge, amount: "10.00"}'), ACCOUNT, PERIOD) == []


def test_minimum_tops_up_usage_charges_pro_rated_across_versions() -> None:
    plans = parse_plans(
        """
plans:
  - {id: m, product: electricity, market: DE, currency: EUR, unit: kWh, versions: [
      {valid_from: 2024-01-01, valid_to: 2024-03-16, components: [{type: flat, price: "1"},
                                                                  {type: minimum, amount: "31"}]},
      {valid_from: 2024-03-16, components: [{type: flat, price: "1"}, {type: minimum, amount: "62"}]}]}
""",
        "m.yaml",
    )
    # required: 31 x 15/31 + 62 x 16/31 = 15 + 32 = 47; usage 40 -> top-up 7
    lines = rate([item(at(2), "40")], plans, ACCOUNT, PERIOD)
    assert [(ln.component, ln.net.amount, ln.plan_version) for ln in lines] == [
        ("flat", D("40"), "2024-01-01"),
        ("minimum", D("7"), "2024-03-16"),
    ]
    assert rate([item(at(2), "47")], plans, ACCOUNT, PERIOD)[-1].component == "flat"


def test_plan_selection() -> None:
    two = parse_plans(
        """
plans:
  - {id: basic, product: electricity, market: DE, currency: EUR, unit: kWh,
     versions: [{valid_from: 2024-01-01, components: [{type: flat, price: "0.30"}]}]}
  - {id: green, product: electricity, market: DE, currency: EUR, unit: kWh,
     versions: [{valid_from: 2024-01-01, components: [{type: flat, price: "0.35"}]}]}
  - {id: swiss, product: electricity, market: CH, currency: CHF, unit: kWh,
     versions: [{valid_from: 2024-01-01, components: [{type: flat, price: "0.25"}]}]}
""",
        "two.yaml",
    )
    with pytest.raises(DomainError) as err:
        rate([item(at(2), "1")], two, ACCOUNT, PERIOD)
    assert err.value.code == "AMBIGUOUS_PLAN"
    green = Account(
        account_id="a1",
        market="DE",
        currency="EUR",
        timezone="Europe/Berlin",
        plan_ids={"electricity": "green"},
    )
    assert rate([item(at(2), "1")], two, green, PERIOD)[0].plan_id == "green"
    wrong = Account(account_id="a1", market="DE", currency="EUR", plan_ids={"electricity": "swiss"})
    with pytest.raises(DomainError) as err:
        rate([item(at(2), "1")], two, wrong, PERIOD)
    assert err.value.code == "PLAN_MISMATCH"
    with pytest.raises(DomainError) as err:
        rate([item(at(2), "1", product="water")], two, green, PERIOD)
    assert err.value.code == "NO_PLAN"


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (
            UsageItem(
                account_id="a1",
                product="electricity",
                ts=datetime(2024, 4, 1, tzinfo=BERLIN),
                quantity=D(1),
                unit="kWh",
            ),
            "OUT_OF_PERIOD",
        ),
        (
            UsageItem(account_id="zz", product="electricity", ts=at(2), quantity=D(1), unit="kWh"),
            "WRONG_ACCOUNT",
        ),
        (
            UsageItem(account_id="a1", product="electricity", ts=at(2), quantity=D(1), unit="Wh"),
            "UNIT_MISMATCH",
        ),
        (
            UsageItem(
                account_id="a1", product="electricity", ts=datetime(2024, 3, 2), quantity=D(1), unit="kWh"
            ),
            "NAIVE_DATETIME",
        ),
        (
            UsageItem(account_id="a1", product="electricity", ts=at(2), quantity=D("NaN"), unit="kWh"),
            "NOT_DECIMAL",
        ),
    ],
)
def test_bad_usage_is_refused(bad: UsageItem, code: str) -> None:
    with pytest.raises(DomainError) as err:
        rate([bad], book(FLAT), ACCOUNT, PERIOD)
    assert err.value.code == code


def test_usage_outside_every_version_is_refused() -> None:
    late_plan = parse_plans(
        """
plans:
  - {id: p, product: electricity, market: DE, currency: EUR, unit: kWh,
     versions: [{valid_from: 2024-03-10, components: [{type: flat, price: "1"}]}]}
""",
        "p.yaml",
    )
    assert rate([item(at(10), "1")], late_plan, ACCOUNT, PERIOD)[0].net.amount == 1
    with pytest.raises(DomainError) as err:
        rate([item(at(9), "1")], late_plan, ACCOUNT, PERIOD)
    assert err.value.code == "NO_PLAN_IN_FORCE"


def test_periods_are_cut_at_local_midnights_and_days_counted_once() -> None:
    segments = cut_period(PERIOD, BERLIN, [date(2024, 3, 16), date(2024, 1, 1), date(2024, 4, 1)])
    assert [(s.start, len(s.days)) for s in segments] == [
        (PERIOD.start, 15),
        (datetime(2024, 3, 16, tzinfo=BERLIN), 16),
    ]
    mid_day = BillingPeriod(
        start=datetime(2024, 3, 1, 12, tzinfo=BERLIN), end=datetime(2024, 3, 3, 6, tzinfo=BERLIN)
    )
    assert [s.days for s in cut_period(mid_day, BERLIN, [])] == [
        (date(2024, 3, 1), date(2024, 3, 2), date(2024, 3, 3))
    ]
    with pytest.raises(DomainError):
        BillingPeriod(start=PERIOD.end, end=PERIOD.start)
    with pytest.raises(DomainError):
        Account(account_id="x", market="DE", currency="EUR", timezone="Mars/Olympus")


def test_adjustment_plus_billed_equals_rerating() -> None:
    plans = book(GRADUATED, change=GRADUATED_2)
    billed = [item(at(2), "90", "a"), item(at(20), "50", "b")]
    late = [item(at(3), "30", "late")]
    adjustments = rate_adjustment(billed, late, plans, ACCOUNT, PERIOD)
    with exact():
        assert net(rate(billed, plans, ACCOUNT, PERIOD)) + net(adjustments) == net(
            rate([*billed, *late], plans, ACCOUNT, PERIOD)
        )
    assert all(a.adjusts == PERIOD and "late" in a.record_ids for a in adjustments)
    assert (
        diff_lines(rate(billed, plans, ACCOUNT, PERIOD), rate(billed, plans, ACCOUNT, PERIOD), PERIOD) == []
    )


# --- properties -------------------------------------------------------------------------------------------

quantities = st.decimals(
    min_value=D("-5"), max_value=D("400"), places=3, allow_nan=False, allow_infinity=False
)
instants = st.integers(min_value=0, max_value=31 * 24 * 60 - 1).map(
    lambda m: PERIOD.start + timedelta(minutes=m)
)
usage = st.lists(
    st.builds(
        lambda ts, q, r: item(ts.astimezone(BERLIN), q, f"r{r}"), instants, quantities, st.integers(0, 5)
    ),
    max_size=25,
)
plan_books = st.sampled_from(
    [
        book(FLAT),
        book(GRADUATED),
        book(VOLUME),
        book(TOU),
        book(GRADUATED, change=GRADUATED_2),
        book(VOLUME, change=VOLUME_2),
        book(FLAT, change=GRADUATED_2),
        book(GRADUATED, extra='- {type: minimum, amount: "50"}'),
    ]
)


@settings(max_examples=150, deadline=None)
@given(usage, plan_books, st.randoms(use_true_random=False))
def test_rating_is_deterministic_and_invariant_to_order(
    items: list[UsageItem], plans: PlanBook, rnd: object
) -> None:
    first = rate(items, plans, ACCOUNT, PERIOD)
    shuffled = list(items)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert rate(shuffled, plans, ACCOUNT, PERIOD) == first
    assert rate(reversed(items), plans, ACCOUNT, PERIOD) == first


@settings(max_examples=150, deadline=None)
@given(usage)
def test_graduated_lines_cost_what_the_total_costs(items: list[UsageItem]) -> None:
    lines = rate(items, book(GRADUATED), ACCOUNT, PERIOD)
    with exact():
        q = sum((i.quantity for i in items), D(0))
        expected = (
            min(q, D(100)) * D("0.30")
            + (min(max(q, D(100)), D(300)) - 100) * D("0.25")
            + (max(q, D(300)) - 300) * D("0.20")
        )
        assert net(lines) == expected
        assert sum((ln.quantity for ln in lines), D(0)) == q
        for ln in lines:
            assert ln.net.amount == ln.quantity * ln.unit_price.amount


WITH_MINIMUM = book(GRADUATED, change=GRADUATED_2, extra='- {type: minimum, amount: "50"}')


@settings(max_examples=100, deadline=None)
@given(usage, st.integers(min_value=0, max_value=25))
def test_late_data_adjustments_complete_the_billed_rating(items: list[UsageItem], split: int) -> None:
    billed, late = items[:split], items[split:]
    adjustments = rate_adjustment(billed, late, WITH_MINIMUM, ACCOUNT, PERIOD)
    with exact():
        assert net(rate(billed, WITH_MINIMUM, ACCOUNT, PERIOD)) + net(adjustments) == net(
            rate(items, WITH_MINIMUM, ACCOUNT, PERIOD)
        )


def test_a_utc_period_from_the_session_core_gives_local_times() -> None:
    utc_period = BillingPeriod(
        start=datetime(2024, 2, 29, 23, tzinfo=ZoneInfo("UTC")),
        end=datetime(2024, 3, 31, 22, tzinfo=ZoneInfo("UTC")),
    )
    lines = rate([item(at(2), "1"), item(at(20), "1")], book(FLAT, change=FLAT), ACCOUNT, utc_period)
    assert [ln.supply_from.isoformat() for ln in lines] == [
        "2024-03-01T00:00:00+01:00",
        "2024-03-16T00:00:00+01:00",
    ]
    assert lines[-1].supply_to.isoformat() == "2024-04-01T00:00:00+02:00"


TIERS = book(GRADUATED).plans[0].versions[0].usage_price.tiers  # type: ignore[union-attr]
levels = st.decimals(min_value=D("-50"), max_value=D("500"), places=2, allow_nan=False, allow_infinity=False)


@settings(max_examples=300)
@given(levels, levels, levels)
def test_band_slices_telescope(a: D, b: D, c: D) -> None:
    def per_band(start: D, end: D) -> dict[int, D]:
        out: dict[int, D] = {}
        for index, quantity in graduated_split(TIERS, start, end):
            out[index] = out.get(index, D(0)) + quantity
        return out

    assert sum(per_band(a, b).values(), D(0)) == b - a
    merged = per_band(a, b)
    for index, quantity in per_band(b, c).items():
        merged[index] = merged.get(index, D(0)) + quantity
    assert {k: v for k, v in merged.items() if v} == per_band(a, c)
