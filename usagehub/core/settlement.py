"""Vendor settlement: what payment providers and service partners earn from a period's transactions.

Share rules: a percentage of the top-ups a vendor processed, a percentage of a
product's net revenue, or an amount per unit of a product. ``settle`` is pure
and deterministic: the same transactions in any order (and with redelivered
duplicates) give the identical statement, down to the bytes of its export.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from usagehub.core.calendars import BillingPeriod, require_aware, zone
from usagehub.core.csvsafe import SafeDictWriter
from usagehub.core.invoice import InvoicePreview
from usagehub.core.money import MINOR_UNITS, Money, RoundingRule, decimal_text, exact, quantize
from usagehub.core.tariffs import parse_document
from usagehub.errors import DomainError

EXPORT_FORMAT = "usagehub.settlement/1"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Rule(_Model):
    id: str
    valid_from: date | None = None   # local dates in the vendor's zone; valid_to exclusive
    valid_to: date | None = None

    def in_force(self, day: date) -> bool:
        """Whether the rule applies to a transaction on local date ``day``."""
        started = self.valid_from is None or self.valid_from <= day
        return started and (self.valid_to is None or day < self.valid_to)


class TopupPercent(_Rule):
    """A percentage of every top-up this vendor processed."""

    type: Literal["topup_percent"]
    percent: Decimal = Field(ge=0, le=100)


class RevenuePercent(_Rule):
    """A percentage of a product's net revenue (excluding VAT)."""

    type: Literal["revenue_percent"]
    product: str
    percent: Decimal = Field(ge=0, le=100)


class PerUnit(_Rule):
    """A fixed amount per unit of a product sold."""

    type: Literal["per_unit"]
    product: str
    unit: str
    amount: Decimal

    @field_validator("amount")
    @classmethod
    def _finite(cls, value: Decimal) -> Decimal:
        if not value.is_finite() or value < 0:
            raise ValueError("must be a non-negative number")
        return value


ShareRule = Annotated[TopupPercent | RevenuePercent | PerUnit, Field(discriminator="type")]


class Vendor(_Model):
    """A third party the hub settles with, in one currency, under its share rules."""

    id: str
    name: str = ""
    kind: Literal["payment_provider", "service_partner"]
    currency: str
    rounding: RoundingRule = RoundingRule.HALF_UP
    timezone: str = "UTC"
    rules: list[ShareRule] = Field(min_length=1)

    @model_validator(mode="after")
    def _coherent(self) -> Vendor:
        if self.currency not in MINOR_UNITS:
            raise ValueError(f"currency {self.currency!r} is not supported")
        ids = [r.id for r in self.rules]
        if len(set(ids)) != len(ids):
            raise ValueError("rule ids must be unique per vendor")
        return self


class VendorBook(_Model):
    """A vendor file: the vendors and their share rules."""

    vendors: list[Vendor] = []

    def vendor(self, vendor_id: str) -> Vendor:
        """The vendor ``vendor_id`` (DomainError ``UNKNOWN_VENDOR``)."""
        for vendor in self.vendors:
            if vendor.id == vendor_id:
                return vendor
        raise DomainError("UNKNOWN_VENDOR", f"no vendor {vendor_id!r}")


def parse_vendors(text: str, source: str) -> VendorBook:
    """Parse a vendor file (YAML text) into a :class:`VendorBook`."""
    return parse_document(text, source, VendorBook)


class TransactionKind(StrEnum):
    """What a transaction is: money loaded onto an account, or net revenue of a product."""

    TOPUP = "topup"
    REVENUE = "revenue"


@dataclass(frozen=True, slots=True, kw_only=True)
class Transaction:
    """A settled fact: a top-up (with its processor) or a product's net revenue (with quantity)."""

    id: str
    kind: TransactionKind
    ts: datetime
    account_id: str
    amount: Money
    processor: str = ""
    product: str = ""
    quantity: Decimal = Decimal(0)
    unit: str = ""
    refs: tuple[str, ...] = ()   # drill-down beyond the transaction: invoice lines, records


@dataclass(frozen=True, slots=True, kw_only=True)
class StatementLine:
    """One rule applied to one transaction."""

    transaction_id: str
    ts: datetime
    account_id: str
    rule_id: str
    rule_type: str
    base: Decimal          # the amount (percent rules) or quantity (per-unit rules) the share is taken of
    factor: Decimal        # the percent, or the amount per unit
    share: Money           # exact
    refs: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleTotal:
    """What one rule earned over the period."""

    rule_id: str
    transactions: int
    base: Decimal
    share: Money           # exact


@dataclass(frozen=True, slots=True, kw_only=True)
class Statement:
    """A vendor's settlement for a period: lines, per-rule totals, the payable rounded once, a digest."""

    vendor_id: str
    period: BillingPeriod
    currency: str
    rounding: RoundingRule
    lines: tuple[StatementLine, ...]
    totals: tuple[RuleTotal, ...]
    total_exact: Money
    total: Money
    digest: str


def _unique(transactions: Iterable[Transaction]) -> list[Transaction]:
    seen: dict[str, Transaction] = {}
    for txn in transactions:
        prior = seen.setdefault(txn.id, txn)
        if prior != txn:   # a redelivery is harmless; two different facts under one id are not
            raise DomainError("CONFLICTING_TRANSACTION",
                              f"transaction {txn.id!r} arrived with different contents")
    return sorted(seen.values(), key=lambda t: (t.ts, t.id))


def _share(rule: TopupPercent | RevenuePercent | PerUnit, vendor: Vendor,
           txn: Transaction) -> tuple[Decimal, Decimal, Decimal] | None:
    """(base, factor, share) when ``rule`` applies to ``txn``, else None."""
    if isinstance(rule, TopupPercent):
        if txn.kind is TransactionKind.TOPUP and txn.processor == vendor.id:
            return txn.amount.amount, rule.percent, txn.amount.amount * rule.percent / 100
    elif isinstance(rule, RevenuePercent):
        if txn.kind is TransactionKind.REVENUE and txn.product == rule.product:
            return txn.amount.amount, rule.percent, txn.amount.amount * rule.percent / 100
    elif txn.kind is TransactionKind.REVENUE and txn.product == rule.product and txn.unit == rule.unit:
        return txn.quantity, rule.amount, txn.quantity * rule.amount
    return None


def settle(vendor: Vendor, period: BillingPeriod, transactions: Iterable[Transaction]) -> Statement:
    """The vendor's statement for ``period`` from ``transactions`` (any order; others' are ignored)."""
    tz = zone(vendor.timezone)
    lines: list[StatementLine] = []
    with exact():
        for txn in _unique(transactions):
            require_aware(txn.ts, "transaction time")
            if not period.contains(txn.ts):
                continue
            day = txn.ts.astimezone(tz).date()
            for rule in vendor.rules:
                found = _share(rule, vendor, txn) if rule.in_force(day) else None
                if found is None:
                    continue
                if txn.amount.currency != vendor.currency:
                    raise DomainError("CURRENCY_MISMATCH",
                                      f"transaction {txn.id!r} is in {txn.amount.currency}, "
                                      f"vendor {vendor.id!r} settles in {vendor.currency}")
                base, factor, share = found
                lines.append(StatementLine(
                    transaction_id=txn.id, ts=txn.ts, account_id=txn.account_id, rule_id=rule.id,
                    rule_type=rule.type, base=base, factor=factor,
                    share=Money(amount=share, currency=vendor.currency), refs=txn.refs))
        totals = tuple(_rule_total(rule.id, lines, vendor.currency) for rule in vendor.rules)
        exact_total = sum((ln.share.amount for ln in lines), Decimal(0))
    total_exact = Money(amount=exact_total, currency=vendor.currency)
    draft = Statement(
        vendor_id=vendor.id, period=period, currency=vendor.currency, rounding=vendor.rounding,
        lines=tuple(lines), totals=totals, total_exact=total_exact,
        total=Money(amount=quantize(exact_total, vendor.currency, vendor.rounding), currency=vendor.currency),
        digest="")
    body = json.dumps(_document(draft, with_digest=False), sort_keys=True, separators=(",", ":"))
    return Statement(**{**_fields(draft), "digest": hashlib.sha256(body.encode()).hexdigest()})


def _fields(statement: Statement) -> dict[str, Any]:
    return {name: getattr(statement, name) for name in Statement.__dataclass_fields__}


def _rule_total(rule_id: str, lines: list[StatementLine], currency: str) -> RuleTotal:
    own = [ln for ln in lines if ln.rule_id == rule_id]
    return RuleTotal(rule_id=rule_id, transactions=len(own), base=sum((ln.base for ln in own), Decimal(0)),
                     share=Money(amount=sum((ln.share.amount for ln in own), Decimal(0)), currency=currency))


def _document(statement: Statement, *, with_digest: bool = True) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": EXPORT_FORMAT, "vendor_id": statement.vendor_id,
        "period": {"start": statement.period.start.isoformat(), "end": statement.period.end.isoformat()},
        "currency": statement.currency, "rounding": statement.rounding.value,
        "lines": [{"transaction_id": ln.transaction_id, "ts": ln.ts.isoformat(), "account_id": ln.account_id,
                   "rule_id": ln.rule_id, "rule_type": ln.rule_type, "base": decimal_text(ln.base),
                   "factor": decimal_text(ln.factor), "share": ln.share.text(), "refs": list(ln.refs)}
                  for ln in statement.lines],
        "totals": [{"rule_id": t.rule_id, "transactions": t.transactions, "base": decimal_text(t.base),
                    "share": t.share.text()} for t in statement.totals],
        "total_exact": statement.total_exact.text(), "total": statement.total.text(),
    }
    if with_digest:
        doc["digest"] = statement.digest
    return doc


def statement_document(statement: Statement) -> dict[str, Any]:
    """The statement as a JSON-ready document (decimals as strings, times ISO 8601 with offset)."""
    return _document(statement)


def statement_to_json(statement: Statement) -> str:
    """The statement as JSON text; a re-run over the same transactions gives identical bytes."""
    return json.dumps(_document(statement), indent=2, ensure_ascii=False) + "\n"


STATEMENT_CSV_COLUMNS = ("row", "transaction_id", "ts", "account_id", "rule_id", "rule_type", "base",
                         "factor", "share", "currency", "transactions", "refs")


def statement_to_csv(statement: Statement) -> str:
    """The statement as CSV: a ``line`` row per share, a ``rule`` row per rule, a ``total`` row."""
    out = io.StringIO()
    writer = SafeDictWriter(out, fieldnames=STATEMENT_CSV_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    cur = statement.currency
    for ln in statement.lines:
        writer.writerow({"row": "line", "transaction_id": ln.transaction_id, "ts": ln.ts.isoformat(),
                         "account_id": ln.account_id, "rule_id": ln.rule_id, "rule_type": ln.rule_type,
                         "base": decimal_text(ln.base), "factor": decimal_text(ln.factor),
                         "share": ln.share.text(), "currency": cur, "refs": ";".join(ln.refs)})
    for t in statement.totals:
        writer.writerow({"row": "rule", "rule_id": t.rule_id, "base": decimal_text(t.base),
                         "share": t.share.text(), "currency": cur, "transactions": t.transactions})
    writer.writerow({"row": "total", "share": statement.total.text(), "currency": cur})
    return out.getvalue()


def revenue_transactions(preview: InvoicePreview) -> list[Transaction]:
    """An invoice preview's lines (and adjustments) as revenue transactions for service partners.

    The id names the account, period and line number, so settling the same
    invoice twice counts each line once.
    """
    start = preview.period.start.isoformat()
    return [Transaction(
        id=f"invoice:{preview.account_id}:{start}:{line.number}", kind=TransactionKind.REVENUE,
        ts=line.rated.supply_from, account_id=preview.account_id, amount=line.rated.net,
        product=line.rated.product, quantity=line.rated.quantity, unit=line.rated.unit,
        refs=(*line.rated.record_ids, *line.rated.event_ids))
        for line in (*preview.lines, *preview.adjustments)]
