"""Vendor settlement: share rules, drill-down to transactions, identical re-runs."""

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
from usagehub.core.money import Money, exact, quantize
from usagehub.core.settlement import (
    Transaction,
    TransactionKind,
    Vendor,
    parse_vendors,
    settle,
    statement_document,
    statement_to_csv,
    statement_to_json,
)
from usagehub.errors import ConfigError, DomainError

UTC = ZoneInfo("UTC")
PERIOD = BillingPeriod(start=datetime(2024, 6, 1, tzinfo=UTC), end=datetime(2024, 7, 1, tzinfo=UTC))
VENDORS = parse_vendors(
    """
vendors:
  - id: payco
    kind: payment_provider
    currency: EUR
    rules:
      - {id: fee-old, type: topup_percent, percent: "1.5", valid_to: 2024-06-15}
      - {id: fee-new, type: topup_percent, percent: "1.25", valid_from: 2024-06-15}
  - id: guardco
    kind: service_partner
    currency: EUR
    rounding: half_even
    rules:
      - {id: share, type: revenue_percent, product: monitoring, percent: "12.5"}
      - {id: per-unit, type: per_unit, product: monitoring, unit: device_day, amount: "0.0125"}
""",
    "vendors.yaml",
)
PAYCO, GUARDCO = VENDORS.vendor("payco"), VENDORS.vendor("guardco")


def topup(tid: str, day: int, amount: str, processor: str = "payco") -> Transaction:
    return Transaction(
        id=tid,
        kind=TransactionKind.TOPUP,
        ts=datetime(2024, 6, day, 10, tzinfo=UTC),
        account_id="acc",
        amount=Money.of(amount, "EUR"),
        processor=processor,
        refs=(f"ledger-{tid}",),
    )


def revenue(
    tid: str, day: int, amount: str, qty: str, product: str = "monitoring", unit: str = "device_day"
) -> Transaction:
    return Transaction(
        id=tid,
        kind=TransactionKind.REVENUE,
        ts=datetime(2024, 6, day, tzinfo=UTC),
        account_id="acc",
        amount=Money.of(amount, "EUR"),
        product=product,
        quantity=D(qty),
        unit=unit,
    )


def test_topup_percent_with_dated_rules_and_drill_down() -> None:
    txns = [
        topup("t1", 3, "50.00"),
        topup("t2", 20, "20.00"),
        topup("t3", 4, "30.00", "other"),
        topup("t4", 1, "10.00"),
        revenue("r1", 2, "100", "10"),
    ]
    statement = settle(PAYCO, PERIOD, txns)
    assert [(ln.transaction_id, ln.rule_id, ln.base, ln.share.amount, ln.refs) for ln in statement.lines] == [
        ("t4", "fee-old", D("10.00"), D("0.15"), ("ledger-t4",)),
        ("t1", "fee-old", D("50.00"), D("0.75"), ("ledger-t1",)),
        ("t2", "fee-new", D("20.00"), D("0.25"), ("ledger-t2",)),
    ]
    assert [(t.rule_id, t.transactions, t.share.amount) for t in statement.totals] == [
        ("fee-old", 2, D("0.90")),
        ("fee-new", 1, D("0.25")),
    ]
    assert statement.total == Money.of("1.15", "EUR")


def test_revenue_percent_and_per_unit_round_once_under_the_vendor_rule() -> None:
    txns = [
        revenue("r1", 2, "0.10", "1"),
        revenue("r2", 3, "0.10", "1"),
        revenue("r3", 4, "9", "3", "water"),
        revenue("r4", 5, "1", "1", unit="period"),
    ]
    statement = settle(GUARDCO, PERIOD, txns)
    assert [(ln.transaction_id, ln.rule_id, ln.share.amount) for ln in statement.lines] == [
        ("r1", "share", D("0.0125")),
        ("r1", "per-unit", D("0.0125")),
        ("r2", "share", D("0.0125")),
        ("r2", "per-unit", D("0.0125")),
        ("r4", "share", D("0.125")),
    ]
    assert statement.total_exact.amount == D("0.1750")
    assert statement.total.amount == D("0.18")  # a tie: half even goes to 8, the even neighbour
    tie = settle(GUARDCO, PERIOD, [revenue("r1", 2, "0.10", "0"), revenue("r9", 3, "0.1", "0")])
    assert tie.total_exact.amount == D("0.025") and tie.total.amount == D("0.02")  # half even


def test_transactions_outside_the_period_are_ignored() -> None:
    outside = topup("late", 1, "100.00")
    outside = Transaction(
        **{**{f: getattr(outside, f) for f in outside.__dataclass_fields__}, "ts": PERIOD.end}
    )
    assert settle(PAYCO, PERIOD, [outside]).lines == ()


def test_redelivered_duplicates_count_once_and_conflicts_are_refused() -> None:
    once = settle(PAYCO, PERIOD, [topup("t1", 3, "50.00")])
    twice = settle(PAYCO, PERIOD, [topup("t1", 3, "50.00"), topup("t1", 3, "50.00")])
    assert once == twice
    with pytest.raises(DomainError) as err:
        settle(PAYCO, PERIOD, [topup("t1", 3, "50.00"), topup("t1", 3, "60.00")])
    assert err.value.code == "CONFLICTING_TRANSACTION"


def test_other_currencies_are_refused() -> None:
    chf = Transaction(
        id="c",
        kind=TransactionKind.TOPUP,
        ts=datetime(2024, 6, 2, tzinfo=UTC),
        account_id="a",
        amount=Money.of("5", "CHF"),
        processor="payco",
    )
    with pytest.raises(DomainError) as err:
        settle(PAYCO, PERIOD, [chf])
    assert err.value.code == "CURRENCY_MISMATCH"


def test_vendor_file_errors_name_the_line() -> None:
    with pytest.raises(ConfigError) as err:
        parse_vendors("vendors:\n  - id: x\n    kind: bank\n    currency: EUR\n    rules: []\n", "v.yaml")
    assert (err.value.field, err.value.line) == ("vendors.0.kind", 3)
    with pytest.raises(ConfigError):
        parse_vendors(
            "vendors:\n  - {id: x, kind: payment_provider, currency: EUR, rules: "
            "[{id: a, type: topup_percent, percent: '101'}]}\n",
            "v.yaml",
        )
    with pytest.raises(DomainError) as derr:
        VENDORS.vendor("nobody")
    assert derr.value.code == "UNKNOWN_VENDOR"


def test_exports() -> None:
    statement = settle(PAYCO, PERIOD, [topup("t1", 3, "50.00"), topup("t2", 20, "20.00")])
    doc = json.loads(statement_to_json(statement))
    assert doc == statement_document(statement)
    assert doc["format"] == "usagehub.settlement/1" and doc["total"] == "1.00" and len(doc["digest"]) == 64
    rows = list(csv.DictReader(io.StringIO(statement_to_csv(statement))))
    assert [r["row"] for r in rows] == ["line", "line", "rule", "rule", "total"]
    assert rows[0]["refs"] == "ledger-t1" and rows[2]["transactions"] == "1" and rows[-1]["share"] == "1.00"


amounts = st.decimals(
    min_value=D("0.01"), max_value=D("500"), places=2, allow_nan=False, allow_infinity=False
)
txn = st.one_of(
    st.builds(
        lambda i, m, a, p: Transaction(
            id=f"t{i}",
            kind=TransactionKind.TOPUP,
            ts=PERIOD.start + timedelta(minutes=m),
            account_id="a",
            amount=Money(amount=a, currency="EUR"),
            processor=p,
        ),
        st.integers(0, 30),
        st.integers(0, 30 * 1440 - 1),
        amounts,
        st.sampled_from(["payco", "other"]),
    ),
    st.builds(
        lambda i, m, a, q: Transaction(
            id=f"r{i}",
            kind=TransactionKind.REVENUE,
            ts=PERIOD.start + timedelta(minutes=m),
            account_id="a",
            amount=Money(amount=a, currency="EUR"),
            product="monitoring",
            quantity=q,
            unit="device_day",
        ),
        st.integers(0, 30),
        st.integers(0, 30 * 1440 - 1),
        amounts,
        st.integers(0, 100).map(D),
    ),
)


def distinct(txns: list[Transaction]) -> list[Transaction]:
    by_id: dict[str, Transaction] = {}
    for t in txns:
        by_id.setdefault(t.id, t)
    return list(by_id.values())


@settings(max_examples=150, deadline=None)
@given(
    st.lists(txn, max_size=30).map(distinct),
    st.randoms(use_true_random=False),
    st.sampled_from(["payco", "guardco"]),
)
def test_a_rerun_in_any_order_gives_the_identical_statement(
    txns: list[Transaction], rnd: object, vendor_id: str
) -> None:
    vendor: Vendor = VENDORS.vendor(vendor_id)
    first = settle(vendor, PERIOD, txns)
    shuffled = list(txns) + list(txns[:3])  # with some redeliveries
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    second = settle(vendor, PERIOD, shuffled)
    assert second == first
    assert statement_to_json(second) == statement_to_json(first)
    assert statement_to_csv(second) == statement_to_csv(first)
    with exact():
        assert first.total_exact.amount == sum((ln.share.amount for ln in first.lines), D(0))
        assert first.total.amount == quantize(first.total_exact.amount, "EUR", vendor.rounding)
        assert first.total_exact.amount == sum((t.share.amount for t in first.totals), D(0))
