"""Invoice preview: rated lines and late-data adjustments with VAT per rate, and JSON/CSV exports.

Lines keep exact nets; per VAT rate the taxable sum and the VAT are rounded once
under the market's rule. ``net_total`` is the sum of the rounded taxable amounts,
``vat_total`` the sum of the rounded VAT amounts, ``gross`` their sum; so the
totals add up exactly on the document a billing system picks up.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from usagehub.core.calendars import BillingPeriod, zone
from usagehub.core.csvsafe import SafeDictWriter
from usagehub.core.money import Money, RoundingRule, decimal_text, total
from usagehub.core.rating import Account, RatedLine, UsageItem, rate
from usagehub.core.tariffs import PlanBook
from usagehub.core.vat import Taxed, VatGroup, VatTable, summarize
from usagehub.errors import DomainError

EXPORT_FORMAT = "usagehub.invoice-preview/2"
# Exports show unit prices to at most this many decimals (a per-day share of a standing charge is a
# repeating fraction); ``net`` is rounded to the currency's minor unit, ``net_exact`` is what was summed.
UNIT_PRICE_DECIMALS = 6


def unit_price_text(price: Decimal) -> str:
    """A unit price to at most ``UNIT_PRICE_DECIMALS`` decimals (half even), as plain text."""
    if price.as_tuple().exponent < -UNIT_PRICE_DECIMALS:  # type: ignore[operator]
        price = price.quantize(Decimal(1).scaleb(-UNIT_PRICE_DECIMALS))
    return decimal_text(price)


@dataclass(frozen=True, slots=True, kw_only=True)
class InvoiceLine:
    """A rated line (or adjustment) with the VAT rate in force at its supply date."""

    number: int
    rated: RatedLine
    vat_rate: Decimal

    @property
    def is_adjustment(self) -> bool:
        """Whether the line adjusts an earlier, already billed period."""
        return self.rated.adjusts is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class InvoicePreview:
    """What an account owes for a period: lines, adjustments, VAT per rate, totals."""

    account_id: str
    market: str
    currency: str
    period: BillingPeriod
    rounding: RoundingRule
    lines: tuple[InvoiceLine, ...]
    adjustments: tuple[InvoiceLine, ...]
    vat: tuple[VatGroup, ...]
    net_total: Money
    vat_total: Money
    gross: Money

    def line(self, number: int) -> InvoiceLine:
        """Line ``number`` (1-based, adjustments continue the numbering) for drill-down."""
        for line in (*self.lines, *self.adjustments):
            if line.number == number:
                return line
        raise DomainError("NO_SUCH_LINE", f"the invoice has no line {number}")


def _supply_date(line: RatedLine, account: Account) -> date:
    return line.supply_from.astimezone(zone(account.timezone)).date()


def build_invoice(account: Account, period: BillingPeriod, lines: Iterable[RatedLine], vat_table: VatTable,
                  *, adjustments: Iterable[RatedLine] = ()) -> InvoicePreview:
    """Assemble an invoice preview from rated lines and adjustment lines (in any order)."""
    rule = vat_table.rounding(account.market)
    current = sorted(lines, key=RatedLine.sort_key)
    late = sorted(adjustments, key=RatedLine.sort_key)
    numbered: list[InvoiceLine] = []
    for number, rated in enumerate([*current, *late], start=1):
        if rated.net.currency != account.currency:
            raise DomainError("CURRENCY_MISMATCH",
                              f"a {rated.net.currency} line on a {account.currency} invoice")
        vat_rate = vat_table.rate_for(account.market, rated.vat_category, _supply_date(rated, account)).rate
        numbered.append(InvoiceLine(number=number, rated=rated, vat_rate=vat_rate))
    groups = summarize((Taxed(rate=ln.vat_rate, category=ln.rated.vat_category, net=ln.rated.net)
                        for ln in numbered), account.currency, rule)
    net_total = total((g.taxable for g in groups), account.currency)
    vat_total = total((g.vat for g in groups), account.currency)
    return InvoicePreview(
        account_id=account.account_id, market=account.market, currency=account.currency, period=period,
        rounding=rule, lines=tuple(numbered[:len(current)]), adjustments=tuple(numbered[len(current):]),
        vat=groups, net_total=net_total, vat_total=vat_total, gross=net_total + vat_total)


def preview_invoice(items: Iterable[UsageItem], book: PlanBook, vat_table: VatTable, account: Account,
                    period: BillingPeriod, *, adjustments: Iterable[RatedLine] = ()) -> InvoicePreview:
    """Rate ``items`` (cut at the market's VAT rate changes) and build the invoice preview."""
    lines = rate(items, book, account, period, split_at=vat_table.change_dates(account.market))
    return build_invoice(account, period, lines, vat_table, adjustments=adjustments)


def _line_doc(line: InvoiceLine, rule: RoundingRule) -> dict[str, Any]:
    r = line.rated
    return {
        "line": line.number, "product": r.product, "plan_id": r.plan_id, "plan_version": r.plan_version,
        "component": r.component, "detail": r.detail, "quantity": decimal_text(r.quantity), "unit": r.unit,
        "unit_price": unit_price_text(r.unit_price.amount), "net": r.net.rounded(rule).text(),
        "net_exact": r.net.text(), "vat_category": r.vat_category,
        "vat_rate": decimal_text(line.vat_rate), "supply_from": r.supply_from.isoformat(),
        "supply_to": r.supply_to.isoformat(),
        "adjusts": None if r.adjusts is None else {"start": r.adjusts.start.isoformat(),
                                                   "end": r.adjusts.end.isoformat()},
        "record_ids": list(r.record_ids), "event_ids": list(r.event_ids),
    }


def invoice_document(preview: InvoicePreview) -> dict[str, Any]:
    """The preview as a JSON-ready document (decimals as strings, times ISO 8601 with offset)."""
    return {
        "format": EXPORT_FORMAT,
        "account_id": preview.account_id, "market": preview.market, "currency": preview.currency,
        "period": {"start": preview.period.start.isoformat(), "end": preview.period.end.isoformat()},
        "rounding": preview.rounding.value, "unit_price_decimals": UNIT_PRICE_DECIMALS,
        "lines": [_line_doc(ln, preview.rounding) for ln in preview.lines],
        "adjustments": [_line_doc(ln, preview.rounding) for ln in preview.adjustments],
        "vat": [{"rate": decimal_text(g.rate), "categories": list(g.categories), "taxable": g.taxable.text(),
                 "taxable_exact": g.taxable_exact.text(), "vat": g.vat.text(), "lines": g.lines}
                for g in preview.vat],
        "net_total": preview.net_total.text(), "vat_total": preview.vat_total.text(),
        "gross": preview.gross.text(),
    }


def invoice_to_json(preview: InvoicePreview) -> str:
    """The preview as JSON text: stable key order, so equal previews give identical bytes."""
    return json.dumps(invoice_document(preview), indent=2, ensure_ascii=False) + "\n"


CSV_COLUMNS = ("row", "line", "product", "plan_id", "plan_version", "component", "detail", "quantity", "unit",
               "unit_price", "net", "net_exact", "currency", "vat_category", "vat_rate", "vat", "gross", "supply_from",
               "supply_to", "adjusts_start", "adjusts_end", "record_ids", "event_ids")


def invoice_to_csv(preview: InvoicePreview) -> str:
    """The preview as CSV: a ``line``/``adjustment`` row per line, a ``vat`` row per rate, a ``total`` row.

    Reference lists are joined with ``;``.
    """
    out = io.StringIO()
    writer = SafeDictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for line in (*preview.lines, *preview.adjustments):
        doc = _line_doc(line, preview.rounding)
        adjusts = doc.pop("adjusts") or {}
        writer.writerow({**doc, "row": "adjustment" if line.is_adjustment else "line",
                         "currency": preview.currency, "adjusts_start": adjusts.get("start", ""),
                         "adjusts_end": adjusts.get("end", ""), "record_ids": ";".join(doc["record_ids"]),
                         "event_ids": ";".join(doc["event_ids"])})
    for group in preview.vat:
        writer.writerow({"row": "vat", "vat_rate": decimal_text(group.rate), "net": group.taxable.text(),
                         "vat": group.vat.text(), "currency": preview.currency,
                         "vat_category": ";".join(group.categories)})
    writer.writerow({"row": "total", "net": preview.net_total.text(), "vat": preview.vat_total.text(),
                     "gross": preview.gross.text(), "currency": preview.currency})
    return out.getvalue()
