"""The worked examples of docs/rating.md, computed from the page's own YAML blocks."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal as D
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from usagehub.core.calendars import BillingPeriod
from usagehub.core.invoice import InvoicePreview, preview_invoice
from usagehub.core.money import Money, exact
from usagehub.core.rating import Account, UsageItem, rate_adjustment
from usagehub.core.settlement import (
    Transaction,
    TransactionKind,
    parse_vendors,
    revenue_transactions,
    settle,
)
from usagehub.core.tariffs import PlanBook, parse_plans
from usagehub.core.vat import VatTable, parse_vat_table

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "rating.md").read_text(encoding="utf-8")


def block(name: str) -> str:
    """The fenced YAML block after ``<!-- example: name -->`` in the doc."""
    found = re.search(rf"<!-- example: {re.escape(name)} -->\s*```yaml\n(.*?)```", DOC, re.S)
    assert found, f"docs/rating.md has no example {name!r}"
    return found.group(1)


def plans(name: str) -> PlanBook:
    return parse_plans(block(name), f"docs/rating.md#{name}")


@pytest.fixture(scope="module")
def vat() -> VatTable:
    return parse_vat_table(
        (ROOT / "usagehub/data/vat_rates.yaml").read_text(encoding="utf-8"), "vat_rates.yaml"
    )


def in_doc(*figures: str) -> None:
    for figure in figures:
        assert f"**{figure}**" in DOC, f"docs/rating.md does not state {figure}"


BERLIN = ZoneInfo("Europe/Berlin")
MARCH = BillingPeriod(start=datetime(2024, 3, 1, tzinfo=BERLIN), end=datetime(2024, 4, 1, tzinfo=BERLIN))
ACME = Account(account_id="acme-home", market="DE", currency="EUR", timezone="Europe/Berlin")


def de_item(day: int, qty: str, record: str) -> UsageItem:
    return UsageItem(
        account_id="acme-home",
        product="electricity",
        ts=datetime(2024, 3, day, 12, tzinfo=BERLIN),
        quantity=D(qty),
        unit="kWh",
        record_id=record,
        event_ids=(f"{record}-ev",),
    )


DE_ITEMS = [
    de_item(5, "80", "br-1"),
    de_item(10, "60", "br-2"),
    de_item(20, "120", "br-3"),
    de_item(31, "60", "br-4"),
]


def test_example_a_lines_and_vat(vat: VatTable) -> None:
    preview = preview_invoice(DE_ITEMS, plans("de-plans"), vat, ACME, MARCH)
    got = [
        (
            ln.rated.plan_version,
            ln.rated.component,
            ln.rated.detail,
            ln.rated.quantity,
            ln.rated.net.amount,
            ln.rated.record_ids,
        )
        for ln in preview.lines
    ]
    assert got[:2] == [
        ("2024-01-01", "graduated", "tier 1 (0-100)", 100, D("30.00"), ("br-1", "br-2")),
        ("2024-01-01", "graduated", "tier 2 (100-300)", 40, D("10.00"), ("br-2",)),
    ]
    assert got[2][:4] == ("2024-01-01", "standing_charge", "", 15)
    with exact():  # the engine's 60-digit context, not the test's 28 digits
        assert got[2][4] == D("12.00") * 15 / 31
    assert str(got[2][4]).startswith("5.806451612903")
    assert got[3:] == [
        ("2024-03-16", "graduated", "tier 2 (100-300)", 160, D("43.20"), ("br-3", "br-4")),
        ("2024-03-16", "graduated", "tier 3 (300+)", 20, D("4.40"), ("br-4",)),
        ("2024-03-16", "standing_charge", "", 16, D("6.40"), ()),
    ]
    assert (preview.net_total, preview.vat_total, preview.gross) == (
        Money.of("99.81", "EUR"),
        Money.of("18.96", "EUR"),
        Money.of("118.77", "EUR"),
    )
    in_doc("99.81", "18.96", "118.77")


def test_example_a_per_line_rounding_would_drift(vat: VatTable) -> None:
    preview = preview_invoice(DE_ITEMS, plans("de-plans"), vat, ACME, MARCH)
    per_line = sum(
        (ln.rated.net.amount * D("0.19")).quantize(D("0.01"), rounding="ROUND_HALF_UP")
        for ln in preview.lines
    )
    assert per_line == D("18.97") != preview.vat_total.amount


def test_example_a_late_data_adjustment() -> None:
    late = [de_item(8, "30", "br-late")]
    adjustments = rate_adjustment(DE_ITEMS, late, plans("de-plans"), ACME, MARCH)
    got = [(a.plan_version, a.detail, a.quantity, a.net.amount, a.record_ids) for a in adjustments]
    assert got == [
        ("2024-01-01", "tier 2 (100-300)", 30, D("7.50"), ("br-late",)),
        ("2024-03-16", "tier 2 (100-300)", -30, D("-8.10"), ("br-late",)),
        ("2024-03-16", "tier 3 (300+)", 30, D("6.60"), ("br-late",)),
    ]
    assert all(a.adjusts == MARCH for a in adjustments)
    assert sum(a.net.amount for a in adjustments) == D("6.00")
    in_doc("+6.00")


def test_example_b_vat_change_inside_the_period(vat: VatTable) -> None:
    paris = ZoneInfo("Europe/Paris")
    account = Account(account_id="fr-1", market="FR", currency="EUR", timezone="Europe/Paris")
    period = BillingPeriod(start=datetime(2025, 7, 16, tzinfo=paris), end=datetime(2025, 8, 16, tzinfo=paris))
    items = [
        UsageItem(
            account_id="fr-1",
            product="electricity",
            ts=datetime(2025, 7, 20, 9, tzinfo=paris),
            quantity=D(150),
            unit="kWh",
            record_id="r1",
        ),
        UsageItem(
            account_id="fr-1",
            product="electricity",
            ts=datetime(2025, 8, 10, 9, tzinfo=paris),
            quantity=D(100),
            unit="kWh",
            record_id="r2",
        ),
    ]
    preview = preview_invoice(items, plans("fr-plans"), vat, account, period)
    got = [(ln.rated.component, ln.rated.quantity, ln.rated.net.amount, ln.vat_rate) for ln in preview.lines]
    assert got == [
        ("flat", 150, D("30.24"), 20),
        ("standing_charge", 16, D("7.20"), D("5.5")),
        ("flat", 100, D("20.16"), 20),
        ("standing_charge", 15, D("6.75"), 20),
    ]
    assert [(g.rate, g.taxable.amount, g.vat.amount) for g in preview.vat] == [
        (20, D("57.15"), D("11.43")),
        (D("5.5"), D("7.20"), D("0.40")),
    ]
    assert (preview.net_total.amount, preview.vat_total.amount, preview.gross.amount) == (
        D("64.35"),
        D("11.83"),
        D("76.18"),
    )
    in_doc("11.43", "0.40", "64.35", "11.83", "76.18")


def test_example_c_time_of_use_with_holiday(vat: VatTable) -> None:
    london = ZoneInfo("Europe/London")
    account = Account(account_id="gb-1", market="GB", currency="GBP", timezone="Europe/London")
    period = BillingPeriod(
        start=datetime(2024, 12, 1, tzinfo=london), end=datetime(2025, 1, 1, tzinfo=london)
    )

    def at(day: int, hour: int, minute: int, qty: str) -> UsageItem:
        return UsageItem(
            account_id="gb-1",
            product="electricity",
            quantity=D(qty),
            unit="kWh",
            ts=datetime(2024, 12, day, hour, minute, tzinfo=london),
            record_id=f"d{day}h{hour}",
        )

    items = [at(24, 6, 30, "3"), at(24, 18, 0, "10"), at(25, 18, 0, "12"), at(28, 12, 0, "5")]
    preview = preview_invoice(items, plans("gb-plans"), vat, account, period)
    got = [(ln.rated.detail, ln.rated.quantity, ln.rated.net.amount) for ln in preview.lines]
    assert got == [
        ("night", 3, D("0.45")),
        ("day", 10, D("3.00")),
        ("weekend", 17, D("3.74")),
        ("", 31, D("15.50")),
    ]
    assert (preview.net_total.amount, preview.vat_total.amount, preview.gross.amount) == (
        D("22.69"),
        D("1.13"),
        D("23.82"),
    )
    in_doc("22.69", "1.13", "23.82")


AMS = ZoneInfo("Europe/Amsterdam")
JUNE = BillingPeriod(start=datetime(2024, 6, 1, tzinfo=AMS), end=datetime(2024, 7, 1, tzinfo=AMS))
GUARD = Account(account_id="guard-42", market="NL", currency="EUR", timezone="Europe/Amsterdam")


def nl_preview(vat: VatTable, legacy: str = "150", camera: str = "100") -> InvoicePreview:
    items = [
        UsageItem(
            account_id="guard-42",
            product="monitoring",
            ts=datetime(2024, 6, 30, tzinfo=AMS),
            quantity=D(legacy),
            unit="device_day",
            record_id="br-legacy",
        ),
        UsageItem(
            account_id="guard-42",
            product="monitoring",
            ts=datetime(2024, 6, 30, tzinfo=AMS),
            quantity=D(camera),
            unit="device_day",
            record_id="br-camera",
        ),
    ]
    return preview_invoice(items, plans("nl-plans"), vat, GUARD, JUNE)


def test_example_d_legacy_and_new_equipment_with_minimum(vat: VatTable) -> None:
    preview = nl_preview(vat)
    got = [
        (ln.rated.component, ln.rated.quantity, ln.rated.net.amount, ln.rated.record_ids)
        for ln in preview.lines
    ]
    assert got == [("volume", 250, D("25.00"), ("br-camera", "br-legacy")), ("minimum", 1, D("5.00"), ())]
    assert (preview.net_total.amount, preview.vat_total.amount, preview.gross.amount) == (
        D("30.00"),
        D("6.30"),
        D("36.30"),
    )
    bigger = nl_preview(vat, "300", "100")
    assert [(ln.rated.unit_price.amount, ln.rated.net.amount) for ln in bigger.lines] == [
        (D("0.08"), D("32.00"))
    ]
    in_doc("5.00", "30.00", "6.30", "36.30")


def test_example_e_settlement(vat: VatTable) -> None:
    vendors = parse_vendors(block("vendors"), "docs/rating.md#vendors")

    def topup(tid: str, amount: str, processor: str) -> Transaction:
        return Transaction(
            id=tid,
            kind=TransactionKind.TOPUP,
            ts=datetime(2024, 6, 3, tzinfo=AMS),
            account_id="guard-42",
            amount=Money.of(amount, "EUR"),
            processor=processor,
        )

    topups = [topup("t1", "50.00", "payco"), topup("t2", "20.00", "payco"), topup("t3", "30.00", "otherpsp")]
    payco = settle(vendors.vendor("payco"), JUNE, topups)
    assert [ln.share.amount for ln in payco.lines] == [D("0.75"), D("0.30")]
    assert payco.total == Money.of("1.05", "EUR")
    guardco = settle(vendors.vendor("guardco"), JUNE, [*topups, *revenue_transactions(nl_preview(vat))])
    assert [(t.rule_id, t.share.amount) for t in guardco.totals] == [
        ("monitoring-share", D("3.00")),
        ("per-device-day", D("5.00")),
    ]
    assert guardco.total == Money.of("8.00", "EUR")
    in_doc("1.05", "8.00")
