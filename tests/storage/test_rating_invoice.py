"""Invoice previews from stored usage (real PostgreSQL, real Pipeline) equal the pure core's, with TOU,
plan changes, late-data adjustments, per-market VAT rounding and exports."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

import pytest
from psycopg_pool import AsyncConnectionPool

from tests.storage.test_rating_support import (
    GRADUATED_DE,
    TOU_GB_TEXT,
    account_with_meter,
    feed_readings,
    items_of,
    local,
    month,
    wired,
)
from usagehub.core.invoice import invoice_document, invoice_to_csv, invoice_to_json, preview_invoice
from usagehub.core.rating import Account, rate_adjustment
from usagehub.core.tariffs import parse_plans
from usagehub.core.vat import parse_vat_table
from usagehub.errors import DomainError
from usagehub.storage.rating_catalog import shipped_vat_text

BERLIN = "Europe/Berlin"
# Register readings (local wall time, Wh): 80 kWh, 60 kWh before the plan change of 16 October,
# 120 kWh and 60 kWh after it (intervals whose midpoints fall on either side).
OCTOBER = [(local(BERLIN, 2026, 10, 2, 10), 0), (local(BERLIN, 2026, 10, 5, 10), 80_000),
           (local(BERLIN, 2026, 10, 10, 10), 140_000), (local(BERLIN, 2026, 10, 19, 10), 140_000),
           (local(BERLIN, 2026, 10, 20, 10), 260_000), (local(BERLIN, 2026, 10, 30, 10), 260_000),
           (local(BERLIN, 2026, 10, 31, 10), 320_000)]


async def test_preview_equals_the_pure_core_and_a_plan_change_splits(pool: AsyncConnectionPool) -> None:
    pipeline, _, rating = wired(pool)
    await account_with_meter(pool, "a1", "m1")
    await rating.start()
    await rating.load_plans(GRADUATED_DE, "plans.yaml")
    await feed_readings(pipeline, "m1", OCTOBER)

    stored = await rating.invoice_preview("a1", "2026-10")
    core = preview_invoice(items_of(OCTOBER, "a1", "a1/2026-10/energy"), parse_plans(GRADUATED_DE, "p"),
                           parse_vat_table(shipped_vat_text(), "v"),
                           Account(account_id="a1", market="DE", currency="EUR", timezone=BERLIN),
                           month("2026-10", BERLIN))
    assert invoice_to_json(stored.preview) == invoice_to_json(core)

    lines = [(ln.rated.plan_version, ln.rated.component, ln.rated.detail, ln.rated.quantity)
             for ln in stored.preview.lines]
    assert lines == [
        ("2026-01-01", "graduated", "tier 1 (0-100)", Decimal(100)),
        ("2026-01-01", "graduated", "tier 2 (100-300)", Decimal(40)),
        ("2026-01-01", "standing_charge", "", Decimal(15)),
        ("2026-10-16", "graduated", "tier 2 (100-300)", Decimal(160)),
        ("2026-10-16", "graduated", "tier 3 (300+)", Decimal(20)),
        ("2026-10-16", "standing_charge", "", Decimal(16)),
    ]
    assert next(ln.rated.record_ids for ln in stored.preview.lines) == ("a1/2026-10/energy",)
    assert (stored.preview.net_total.text(), stored.preview.vat_total.text(), stored.preview.gross.text()) == \
        ("99.81", "18.96", "118.77")
    assert stored.unpriced == ()




async def test_time_of_use_is_priced_from_point_times_in_the_account_zone(pool: AsyncConnectionPool) -> None:
    pipeline, _, rating = wired(pool)
    london = "Europe/London"
    await account_with_meter(pool, "g1", "mg", market="GB", currency="GBP", timezone=london)
    await rating.start()
    await rating.load_plans(TOU_GB_TEXT, "gb.yaml")
    # Tuesday 13 Oct 06:00-06:30 local (05:00Z: night), 18:00-18:30 (day); Wednesday 14 Oct is a
    # holiday (weekend price); Saturday 17 Oct noon (weekend).
    readings = [(local(london, 2026, 10, 13, 6), 0), (local(london, 2026, 10, 13, 6, 30), 3000),
                (local(london, 2026, 10, 13, 18), 3000), (local(london, 2026, 10, 13, 18, 30), 13_000),
                (local(london, 2026, 10, 14, 18), 13_000), (local(london, 2026, 10, 14, 18, 30), 25_000),
                (local(london, 2026, 10, 17, 12), 25_000), (local(london, 2026, 10, 17, 12, 30), 30_000)]
    await feed_readings(pipeline, "mg", readings)
    stored = await rating.invoice_preview("g1", "2026-10")
    windows = {ln.rated.detail: (ln.rated.quantity, ln.rated.net.amount) for ln in stored.preview.lines}
    assert windows == {"night": (Decimal(3), Decimal("0.45")), "day": (Decimal(10), Decimal("3.00")),
                       "weekend": (Decimal(17), Decimal("3.74"))}
    assert (stored.preview.net_total.text(), stored.preview.vat_total.text()) == ("7.19", "0.36")


async def test_late_event_after_billing_becomes_an_adjustment_line(pool: AsyncConnectionPool) -> None:
    pipeline, billing, rating = wired(pool)
    await account_with_meter(pool, "a1", "m1")
    await rating.start()
    await rating.load_plans(GRADUATED_DE, "plans.yaml")
    early = OCTOBER[:5]   # up to 20 October: 260 kWh
    await feed_readings(pipeline, "m1", early)
    before = await rating.invoice_preview("a1", "2026-10")
    await billing.mark_billed(tenant="default", record_ids=["a1/2026-10/energy"], author="test")
    late = [(local(BERLIN, 2026, 10, 28, 10), 300_000)]   # 40 kWh more on 20-28 October, after the bill
    await feed_readings(pipeline, "m1", late, first_seq=10)

    # The billed period's invoice is unchanged; November carries the difference as adjustment lines.
    again = await rating.invoice_preview("a1", "2026-10")
    assert invoice_to_json(again.preview) == invoice_to_json(before.preview)
    november = await rating.invoice_preview("a1", "2026-11")
    assert november.preview.lines == ()
    adjustments = november.preview.adjustments
    account = Account(account_id="a1", market="DE", currency="EUR", timezone=BERLIN)
    book = parse_plans(GRADUATED_DE, "p")
    billed_items = items_of(early, "a1", "a1/2026-10/energy")
    late_items = items_of([early[-1], *late], "a1", "a1/2026-10/energy/adj/2026-11")
    vat = parse_vat_table(shipped_vat_text(), "v")
    expected = rate_adjustment(billed_items, late_items, book, account, month("2026-10", BERLIN),
                               split_at=vat.change_dates("DE"))
    assert [ln.rated for ln in adjustments] == expected
    assert [(ln.rated.detail, ln.rated.quantity, ln.rated.net.amount) for ln in adjustments] == \
        [("tier 2 (100-300)", Decimal(40), Decimal("10.80"))]
    assert adjustments[0].rated.adjusts == month("2026-10", BERLIN)
    assert adjustments[0].rated.record_ids == ("a1/2026-10/energy/adj/2026-11",)
    assert november.preview.net_total.text() == "10.80"
    assert before.preview.gross != november.preview.gross


VAT_TWO_MARKETS = """
version: 1
markets:
  DE:
    name: Germany
    rounding: half_up
    rates:
      - {category: standard, rate: "19", valid_from: 2015-01-01, source: "test: UStG s.12(1)"}
  LU:
    name: Test market rounding half to even
    rounding: half_even
    rates:
      - {category: standard, rate: "19", valid_from: 2015-01-01, source: "test"}
"""


def _flat(market: str) -> str:
    return f"""
  - id: energy-{market.lower()}
    product: energy
    market: {market}
    currency: EUR
    unit: kWh
    versions:
      - valid_from: 2026-01-01
        components:
          - {{type: graduated, tiers: [{{up_to: "7.5", price: "0.10"}}, {{price: "0.10"}}]}}
"""


async def test_vat_is_rounded_once_per_invoice_under_each_markets_rule(pool: AsyncConnectionPool) -> None:
    pipeline, _, rating = wired(pool)
    await account_with_meter(pool, "up", "mu", market="DE")
    await account_with_meter(pool, "even", "me", market="LU")
    revision, changed = await rating.load_vat(VAT_TWO_MARKETS, "vat.yaml")
    assert changed and (await rating.load_vat(VAT_TWO_MARKETS, "vat.yaml")) == (revision, False)
    await rating.load_plans("plans:" + _flat("DE") + _flat("LU"), "plans.yaml")
    readings = [(local(BERLIN, 2026, 10, 3, 10), 0), (local(BERLIN, 2026, 10, 3, 11), 15_000)]
    await feed_readings(pipeline, "mu", readings)
    await feed_readings(pipeline, "me", readings)
    # 15 kWh in two tier lines of 0.75 each: VAT 19 % of 1.50 = 0.285 on the invoice. Rounding each
    # line (0.1425 -> 0.14) would give 0.28 under either rule.
    up = (await rating.invoice_preview("up", "2026-10")).preview
    even = (await rating.invoice_preview("even", "2026-10")).preview
    assert [ln.rated.net.amount for ln in up.lines] == [Decimal("0.75"), Decimal("0.75")]
    assert (up.vat_total.text(), up.gross.text(), up.rounding.value) == ("0.29", "1.79", "half_up")
    assert (even.vat_total.text(), even.gross.text(), even.rounding.value) == ("0.28", "1.78", "half_even")


async def test_exports_parse_back_to_the_preview(pool: AsyncConnectionPool) -> None:
    pipeline, _, rating = wired(pool)
    await account_with_meter(pool, "a1", "m1")
    await rating.start()
    await rating.load_plans(GRADUATED_DE, "plans.yaml")
    await feed_readings(pipeline, "m1", OCTOBER)
    preview = (await rating.invoice_preview("a1", "2026-10")).preview

    document = json.loads(await rating.invoice_export("a1", "2026-10", "json"))
    assert document == invoice_document(preview)
    text = await rating.invoice_export("a1", "2026-10", "csv")
    assert text == invoice_to_csv(preview)
    rows = list(csv.DictReader(io.StringIO(text)))
    lines = [r for r in rows if r["row"] == "line"]
    assert [(r["component"], Decimal(r["net_exact"])) for r in lines] == \
        [(ln.rated.component, ln.rated.net.amount) for ln in preview.lines]
    assert next(r["record_ids"] for r in lines) == "a1/2026-10/energy"
    (total,) = [r for r in rows if r["row"] == "total"]
    assert (total["net"], total["vat"], total["gross"]) == ("99.81", "18.96", "118.77")
    with pytest.raises(DomainError) as err:
        await rating.invoice_export("a1", "2026-10", "xml")
    assert err.value.code == "BAD_FORMAT"


async def test_products_without_a_plan_are_reported_not_priced(pool: AsyncConnectionPool) -> None:
    pipeline, _, rating = wired(pool)
    await account_with_meter(pool, "a1", "m1")
    await rating.start()
    await feed_readings(pipeline, "m1", OCTOBER[:3])
    stored = await rating.invoice_preview("a1", "2026-10")
    assert stored.preview.lines == () and stored.preview.gross.amount == 0
    assert [(u.product, u.quantity) for u in stored.unpriced] == [("energy", Decimal(140))]
    with pytest.raises(DomainError) as err:
        await rating.invoice_preview("nobody", "2026-10")
    assert err.value.code == "UNKNOWN_ACCOUNT"
    with pytest.raises(DomainError) as err:
        await rating.invoice_preview("a1", "October")
    assert err.value.code == "BAD_PERIOD"


async def test_an_assigned_plan_is_subscribed_and_chosen_among_several(pool: AsyncConnectionPool) -> None:
    _, _, rating = wired(pool)
    await account_with_meter(pool, "a1", "m1")
    await rating.start()
    second = GRADUATED_DE.replace("id: energy-de", "id: energy-de-2").replace("plans:\n", "")
    await rating.load_plans(GRADUATED_DE + second, "plans.yaml")
    with pytest.raises(DomainError) as err:
        async with pool.connection() as conn:
            await rating.usage_charge(conn, account_id="a1", product="energy", quantity=Decimal(1),
                                      at=local(BERLIN, 2026, 10, 5))
    assert err.value.code == "AMBIGUOUS_PLAN"
    assert await rating.assign_plan("a1", "energy-de-2") == ("a1", "energy", "energy-de-2")
    # Subscribed: the standing charge applies in a period without usage.
    stored = await rating.invoice_preview("a1", "2026-09")
    assert [(ln.rated.plan_id, ln.rated.component) for ln in stored.preview.lines] == \
        [("energy-de-2", "standing_charge")]
    assert stored.preview.net_total.text() == "12.00"
