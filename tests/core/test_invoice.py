"""Invoice preview: totals add up, VAT by each market's rule, adjustments, drill-down, exports."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta
from decimal import Decimal as D
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usagehub.core.calendars import BillingPeriod
from usagehub.core.invoice import build_invoice, invoice_to_csv, invoice_to_json, preview_invoice
from usagehub.core.money import Money, RoundingRule, exact, quantize
from usagehub.core.rating import Account, UsageItem, rate, rate_adjustment
from usagehub.core.tariffs import parse_plans
from usagehub.core.vat import parse_vat_table
from usagehub.errors import DomainError

ZURICH = ZoneInfo("Europe/Zurich")
# Two test markets with the same rates and opposite rounding rules, and a rate change on 2024-01-01.
VAT = parse_vat_table(
    """
markets:
  XU:
    name: half-up land
    rounding: half_up
    rates:
      - {category: standard, rate: "7.7", valid_from: 2018-01-01, valid_to: 2024-01-01, source: test}
      - {category: standard, rate: "8.1", valid_from: 2024-01-01, source: test}
      - {category: reduced, rate: "2.5", valid_from: 2018-01-01, source: test}
  XE:
    name: half-even land
    rounding: half_even
    rates:
      - {category: standard, rate: "7.7", valid_from: 2018-01-01, valid_to: 2024-01-01, source: test}
      - {category: standard, rate: "8.1", valid_from: 2024-01-01, source: test}
      - {category: reduced, rate: "2.5", valid_from: 2018-01-01, source: test}
""",
    "test-vat.yaml",
)


def plans_for(market: str) -> str:
    return f"""
  - id: power-{market}
    product: power
    market: {market}
    currency: CHF
    unit: kWh
    versions:
      - valid_from: 2023-01-01
        components:
          - {{type: graduated, tiers: [{{up_to: 50, price: "0.2345"}}, {{price: "0.1875"}}]}}
          - {{type: standing_charge, amount: "7.35", per: period, vat_category: reduced}}
  - id: alarm-{market}
    product: alarm
    market: {market}
    currency: CHF
    unit: event
    versions:
      - valid_from: 2023-01-01
        components:
          - {{type: flat, price: "0.125"}}
"""


BOOK = parse_plans("plans:" + plans_for("XU") + plans_for("XE"), "test-plans.yaml")
PERIOD = BillingPeriod(start=datetime(2023, 12, 15, tzinfo=ZURICH), end=datetime(2024, 1, 15, tzinfo=ZURICH))


def account(market: str) -> Account:
    return Account(account_id="acc", market=market, currency="CHF", timezone="Europe/Zurich")


def use(ts: datetime, product: str, qty: str | D, record: str) -> UsageItem:
    return UsageItem(
        account_id="acc",
        product=product,
        ts=ts,
        quantity=D(qty),
        unit="kWh" if product == "power" else "event",
        record_id=record,
        event_ids=(f"ev-{record}",),
    )


ITEMS = [
    use(datetime(2023, 12, 20, 8, tzinfo=ZURICH), "power", "40", "b1"),
    use(datetime(2024, 1, 3, 8, tzinfo=ZURICH), "power", "30", "b2"),
    use(datetime(2024, 1, 4, 8, tzinfo=ZURICH), "alarm", "3", "b3"),
]


def test_vat_change_splits_lines_and_each_line_has_its_rate() -> None:
    preview = preview_invoice(ITEMS, BOOK, VAT, account("XU"), PERIOD)
    got = [
        (ln.number, ln.rated.product, ln.rated.component, ln.rated.quantity, ln.vat_rate)
        for ln in preview.lines
    ]
    assert got == [
        (1, "alarm", "flat", 3, D("8.1")),
        (2, "power", "graduated", 40, D("7.7")),
        (3, "power", "standing_charge", 17, D("2.5")),
        (4, "power", "graduated", 10, D("8.1")),
        (5, "power", "graduated", 20, D("8.1")),
        (6, "power", "standing_charge", 14, D("2.5")),
    ]
    assert preview.line(5).rated.record_ids == ("b2",) and preview.line(5).rated.event_ids == ("ev-b2",)
    assert preview.line(5).rated.detail == "tier 2 (50+)"
    with pytest.raises(DomainError):
        preview.line(99)


def test_half_up_and_half_even_markets_round_the_same_invoice_differently() -> None:
    # one alarm event at 0.125: the taxable amount is a tie (0.13 half up, 0.12 half even)
    items = [use(datetime(2024, 1, 4, 8, tzinfo=ZURICH), "alarm", "1", "x")]
    up = preview_invoice(items, BOOK, VAT, account("XU"), PERIOD)
    even = preview_invoice(items, BOOK, VAT, account("XE"), PERIOD)
    assert (up.net_total.amount, even.net_total.amount) == (D("0.13"), D("0.12"))
    assert up.rounding is RoundingRule.HALF_UP and even.rounding is RoundingRule.HALF_EVEN


def test_adjustments_carry_their_period_and_original_vat_rate() -> None:
    earlier = BillingPeriod(start=datetime(2023, 11, 15, tzinfo=ZURICH), end=PERIOD.start)
    billed = [use(datetime(2023, 11, 16, tzinfo=ZURICH), "power", "10", "billed")]
    late = [use(datetime(2023, 11, 20, tzinfo=ZURICH), "power", "50", "late")]
    adjustments = rate_adjustment(billed, late, BOOK, account("XU"), earlier)
    preview = preview_invoice(ITEMS, BOOK, VAT, account("XU"), PERIOD, adjustments=adjustments)
    got = [
        (a.number, a.rated.detail, a.rated.quantity, a.vat_rate, a.is_adjustment) for a in preview.adjustments
    ]
    assert got == [(7, "tier 1 (0-50)", 40, D("7.7"), True), (8, "tier 2 (50+)", 10, D("7.7"), True)]
    doc = json.loads(invoice_to_json(preview))
    assert doc["adjustments"][0]["adjusts"] == {
        "start": earlier.start.isoformat(),
        "end": earlier.end.isoformat(),
    }
    assert doc["adjustments"][0]["record_ids"] == ["late"]


def test_exports_are_complete_and_byte_stable() -> None:
    preview = preview_invoice(ITEMS, BOOK, VAT, account("XU"), PERIOD)
    again = preview_invoice(list(reversed(ITEMS)), BOOK, VAT, account("XU"), PERIOD)
    assert invoice_to_json(preview) == invoice_to_json(again)
    assert invoice_to_csv(preview) == invoice_to_csv(again)
    doc = json.loads(invoice_to_json(preview))
    assert doc["format"] == "usagehub.invoice-preview/2"
    assert (doc["net_total"], doc["vat_total"], doc["gross"]) == (
        preview.net_total.text(),
        preview.vat_total.text(),
        preview.gross.text(),
    )
    assert doc["lines"][0]["event_ids"] == ["ev-b3"] and doc["lines"][0]["unit_price"] == "0.125"
    rows = list(csv.DictReader(io.StringIO(invoice_to_csv(preview))))
    assert [r["row"] for r in rows] == ["line"] * 6 + ["vat"] * 3 + ["total"]
    assert rows[-1]["gross"] == preview.gross.text()
    with exact():
        assert sum(D(r["net"]) for r in rows if r["row"] == "vat") == D(rows[-1]["net"])
        assert sum(D(r["vat"]) for r in rows if r["row"] == "vat") == D(rows[-1]["vat"])


def test_lines_in_another_currency_are_refused() -> None:
    lines = rate(ITEMS, BOOK, account("XU"), PERIOD)
    eur = Account(account_id="acc", market="XU", currency="EUR", timezone="Europe/Zurich")
    with pytest.raises(DomainError) as err:
        build_invoice(eur, PERIOD, lines, VAT)
    assert err.value.code == "CURRENCY_MISMATCH"


quantities = st.decimals(
    min_value=D("0"), max_value=D("200"), places=3, allow_nan=False, allow_infinity=False
)
minutes = st.integers(min_value=0, max_value=31 * 24 * 60 - 1)
usage = st.lists(
    st.builds(
        lambda m, p, q, r: use(PERIOD.start + timedelta(minutes=m), p, q, f"r{r}"),
        minutes,
        st.sampled_from(["power", "alarm"]),
        quantities,
        st.integers(0, 9),
    ),
    max_size=20,
)


@settings(max_examples=120, deadline=None)
@given(usage, st.sampled_from(["XU", "XE"]))
def test_totals_equal_lines_plus_vat_rounded_by_the_market_rule(items: list[UsageItem], market: str) -> None:
    preview = preview_invoice(items, BOOK, VAT, account(market), PERIOD)
    rule = VAT.rounding(market)
    lines = (*preview.lines, *preview.adjustments)
    with exact():
        for group in preview.vat:
            exact_net = sum((ln.rated.net.amount for ln in lines if ln.vat_rate == group.rate), D(0))
            assert group.taxable.amount == quantize(exact_net, "CHF", rule)
            assert group.vat.amount == quantize(exact_net * group.rate / 100, "CHF", rule)
        assert preview.net_total == Money(
            amount=sum((g.taxable.amount for g in preview.vat), D(0)), currency="CHF"
        )
        assert preview.vat_total.amount == sum((g.vat.amount for g in preview.vat), D(0))
        assert preview.gross == preview.net_total + preview.vat_total
        # the lines' exact sum is within half a centime per rate of the invoiced net
        drift = abs(preview.net_total.amount - sum((ln.rated.net.amount for ln in lines), D(0)))
        assert drift <= D("0.005") * len(preview.vat)
        assert sum(g.lines for g in preview.vat) == len(lines)


@settings(max_examples=60, deadline=None)
@given(usage, st.randoms(use_true_random=False))
def test_invoice_export_is_invariant_to_input_order(items: list[UsageItem], rnd: object) -> None:
    shuffled = list(items)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    first = preview_invoice(items, BOOK, VAT, account("XE"), PERIOD)
    assert invoice_to_json(first) == invoice_to_json(
        preview_invoice(shuffled, BOOK, VAT, account("XE"), PERIOD)
    )
    assert all(ln.rated.supply_from.tzinfo is not None for ln in first.lines)


def test_exports_round_money_to_the_minor_unit_and_unit_prices_to_six_decimals() -> None:
    from usagehub.core.invoice import unit_price_text

    assert unit_price_text(D("12.00") / D(31)) == "0.387097"  # a day's share of a standing charge
    assert unit_price_text(D("0.125")) == "0.125" and unit_price_text(D("0.30")) == "0.30"
    preview = preview_invoice(ITEMS, BOOK, VAT, account("XU"), PERIOD)
    doc = json.loads(invoice_to_json(preview))
    minor = D("0.01")
    for line, exact_line in zip(doc["lines"], preview.lines, strict=True):
        assert D(line["net"]) == D(line["net"]).quantize(minor)
        assert D(line["net_exact"]) == exact_line.rated.net.amount
        assert abs(D(line["net"]) - D(line["net_exact"])) <= D("0.005")
        assert -D(line["unit_price"]).as_tuple().exponent <= 6  # type: ignore[operator]
