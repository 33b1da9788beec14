"""GraphQL types of rating: plans, VAT rates, invoice previews, vendors, settlement statements.

Money is a decimal string with its currency (never a float); drill-down fields
(billing records, event ids, statement lines) need an admin or billing key.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from usagehub.core import money as core_money
from usagehub.core.invoice import InvoiceLine as CoreLine
from usagehub.core.invoice import unit_price_text
from usagehub.core.money import decimal_text
from usagehub.core.settlement import Statement, Vendor
from usagehub.core.vat import VatTable
from usagehub.graphql import billing as b
from usagehub.graphql.auth import api_error, require
from usagehub.graphql.pagination import Connection, connection, decode_cursor, page_size
from usagehub.rating import service
from usagehub.storage.rating_catalog import PlanChange as CorePlanChange
from usagehub.storage.rating_catalog import StoredPlan
from usagehub.storage.rating_settlement import SettlementRun as CoreRun

DRILL_DOWN = ("admin", "billing")


@strawberry.type(name="RatingMoney")
class Money:
    """An exact amount: a decimal string in ``currency`` (exact lines are not rounded)."""

    amount: str
    currency: str

    @classmethod
    def of(cls, m: core_money.Money) -> Money:
        """From core money."""
        return cls(amount=m.text(), currency=m.currency)


@strawberry.type(name="RatingPeriod")
class Period:
    """A billing or settlement period [start, end)."""

    label: str
    start: datetime
    end: datetime


@strawberry.type
class PlanVersion:
    """A dated version of a plan (valid_to exclusive) and its components."""

    valid_from: date
    valid_to: date | None
    components: JSON


@strawberry.type
class PricePlan:
    """A plan in force (its latest revision)."""

    id: str
    revision: int
    product: str
    market: str
    currency: str
    unit: str
    vat_category: str
    description: str
    source: str
    versions: list[PlanVersion]
    definition: JSON

    @classmethod
    def of(cls, stored: StoredPlan) -> PricePlan:
        """From a stored plan."""
        p = stored.plan
        doc = p.model_dump(mode="json")
        return cls(id=p.id, revision=stored.revision, product=p.product, market=p.market, currency=p.currency,
                   unit=p.unit, vat_category=p.vat_category, description=p.description, source=stored.source,
                   versions=[PlanVersion(valid_from=v.valid_from, valid_to=v.valid_to, components=d["components"])
                             for v, d in zip(p.versions, doc["versions"], strict=True)],
                   definition=doc)  # type: ignore[arg-type]  # JSON is a NewType over Any


@strawberry.type
class PlanChange:
    """What setting a plan did: a new revision, or none (unchanged)."""

    plan_id: str
    revision: int
    changed: bool
    retired: bool

    @classmethod
    def of(cls, c: CorePlanChange) -> PlanChange:
        """From the catalogue's answer."""
        return cls(plan_id=c.plan_id, revision=c.revision, changed=c.changed, retired=c.retired)


@strawberry.type
class AccountPlan:
    """The plan an account uses for a product."""

    account_id: str
    product: str
    plan_id: str


@strawberry.type
class VatRate:
    """A dated VAT rate (percent) of a category in a market, with its source."""

    market: str
    category: str
    rate: str
    valid_from: date
    valid_to: date | None
    source: str
    rounding: str


def vat_rates(table: VatTable, market: str | None) -> list[VatRate]:
    """The rates of one or every market."""
    return [VatRate(market=code, category=r.category, rate=decimal_text(r.rate), valid_from=r.valid_from,
                    valid_to=r.valid_to, source=r.source, rounding=m.rounding.value)
            for code, m in sorted(table.markets.items()) if market is None or code == market for r in m.rates]


@strawberry.type
class InvoiceLine:
    """A priced line (or adjustment): exact net, VAT rate of its supply date, drill-down to records."""

    number: int
    product: str
    plan_id: str
    plan_version: str
    component: str
    detail: str
    quantity: str
    unit: str
    unit_price: Money
    net: Money
    vat_category: str
    vat_rate: str
    supply_from: datetime
    supply_to: datetime
    adjusts: Period | None
    _record_ids: strawberry.Private[tuple[str, ...]]
    _event_ids: strawberry.Private[tuple[str, ...]]

    @classmethod
    def of(cls, line: CoreLine) -> InvoiceLine:
        """From a core invoice line."""
        r = line.rated
        adjusts = None if r.adjusts is None else Period(label="", start=r.adjusts.start, end=r.adjusts.end)
        return cls(number=line.number, product=r.product, plan_id=r.plan_id, plan_version=r.plan_version,
                   component=r.component, detail=r.detail, quantity=decimal_text(r.quantity), unit=r.unit,
                   unit_price=Money(amount=unit_price_text(r.unit_price.amount), currency=r.unit_price.currency),
                   net=Money.of(r.net), vat_category=r.vat_category,
                   vat_rate=decimal_text(line.vat_rate), supply_from=r.supply_from, supply_to=r.supply_to,
                   adjusts=adjusts, _record_ids=r.record_ids, _event_ids=r.event_ids)

    @strawberry.field(description="Ids of the billing records behind the line.")
    def record_ids(self, info: Info) -> list[str]:
        require(info, *DRILL_DOWN)
        return list(self._record_ids)

    @strawberry.field(description="Ids of the events behind the line (when the rating input carried them).")
    def event_ids(self, info: Info) -> list[str]:
        require(info, *DRILL_DOWN)
        return list(self._event_ids)

    @strawberry.field(description="The billing records behind the line; drill down to sessions and events.")
    async def billing_records(self, info: Info) -> list[b.BillingRecord]:
        tenant = require(info, *DRILL_DOWN)
        billing = info.context.services.billing
        if billing is None:
            raise api_error("UNAVAILABLE", "billing is not running in this hub")
        found = [await billing.record(tenant=tenant, record_id=rid) for rid in self._record_ids]
        return [b.BillingRecord.of(r) for r in found if r is not None]


@strawberry.type
class VatSummary:
    """VAT of one rate: the exact taxable sum, rounded once, and the VAT rounded once."""

    rate: str
    categories: list[str]
    taxable: Money
    taxable_exact: Money
    vat: Money
    lines: int


@strawberry.type
class UnpricedUsage:
    """Billed usage no plan prices for the account (not invoiced)."""

    product: str
    quantity: str
    unit: str
    record_ids: list[str]


@strawberry.type
class InvoicePreview:
    """What an account owes for a period: lines, adjustments, VAT per rate, totals."""

    account_id: str
    market: str
    currency: str
    period: Period
    rounding: str
    lines: list[InvoiceLine]
    adjustments: list[InvoiceLine]
    vat: list[VatSummary]
    net_total: Money
    vat_total: Money
    gross: Money
    unpriced: list[UnpricedUsage]

    @classmethod
    def of(cls, stored: service.StoredInvoice) -> InvoicePreview:
        """From the service's preview."""
        p = stored.preview
        return cls(
            account_id=p.account_id, market=p.market, currency=p.currency,
            period=Period(label=stored.label, start=p.period.start, end=p.period.end), rounding=p.rounding.value,
            lines=[InvoiceLine.of(ln) for ln in p.lines], adjustments=[InvoiceLine.of(ln) for ln in p.adjustments],
            vat=[VatSummary(rate=decimal_text(g.rate), categories=list(g.categories), taxable=Money.of(g.taxable),
                            taxable_exact=Money.of(g.taxable_exact), vat=Money.of(g.vat), lines=g.lines)
                 for g in p.vat],
            net_total=Money.of(p.net_total), vat_total=Money.of(p.vat_total), gross=Money.of(p.gross),
            unpriced=[UnpricedUsage(product=u.product, quantity=decimal_text(u.quantity), unit=u.unit,
                                    record_ids=list(u.record_ids)) for u in stored.unpriced])


@strawberry.type
class VendorShareRule:
    """A share rule: topup_percent, revenue_percent or per_unit, optionally dated."""

    id: str
    type: str
    product: str | None
    unit: str | None
    percent: str | None
    amount: str | None
    valid_from: date | None
    valid_to: date | None


@strawberry.type
class SettlementVendor:
    """A payment provider or service partner and its share rules."""

    id: str
    name: str
    kind: str
    currency: str
    rounding: str
    timezone: str
    revision: int
    rules: list[VendorShareRule]

    @classmethod
    def of(cls, v: Vendor, revision: int) -> SettlementVendor:
        """From a core vendor."""
        def text(value: Any) -> str | None:
            return None if value is None else decimal_text(value)

        return cls(id=v.id, name=v.name, kind=v.kind, currency=v.currency, rounding=v.rounding.value,
                   timezone=v.timezone, revision=revision,
                   rules=[VendorShareRule(id=r.id, type=r.type, product=getattr(r, "product", None),
                                          unit=getattr(r, "unit", None), percent=text(getattr(r, "percent", None)),
                                          amount=text(getattr(r, "amount", None)), valid_from=r.valid_from,
                                          valid_to=r.valid_to) for r in v.rules])


@strawberry.type
class StatementLine:
    """One rule applied to one transaction (exact share)."""

    transaction_id: str
    ts: datetime
    account_id: str
    rule_id: str
    rule_type: str
    base: str
    factor: str
    share: Money
    refs: list[str]
    _index: strawberry.Private[int]


@strawberry.type
class RuleTotal:
    """What one rule earned over the period (exact)."""

    rule_id: str
    transactions: int
    base: str
    share: Money


@strawberry.type
class SettlementStatement:
    """A vendor's statement: per-rule totals, the payable rounded once, a content digest."""

    vendor_id: str
    period: Period
    currency: str
    rounding: str
    digest: str
    total: Money
    total_exact: Money
    totals: list[RuleTotal]
    runs: int
    _statement: strawberry.Private[Statement]

    @classmethod
    def of(cls, run: CoreRun) -> SettlementStatement:
        """From a stored run."""
        s = run.statement
        return cls(vendor_id=s.vendor_id, period=Period(label=run.period_label, start=s.period.start,
                                                        end=s.period.end),
                   currency=s.currency, rounding=s.rounding.value, digest=s.digest, total=Money.of(s.total),
                   total_exact=Money.of(s.total_exact), runs=run.runs, _statement=s,
                   totals=[RuleTotal(rule_id=t.rule_id, transactions=t.transactions, base=decimal_text(t.base),
                                     share=Money.of(t.share)) for t in s.totals])

    @strawberry.field(description="The statement's lines (transactions x rules), in order.")
    def lines(self, info: Info, first: int = 100, after: str | None = None) -> Connection[StatementLine]:
        require(info, *DRILL_DOWN)
        n = page_size(first)
        start = decode_cursor(after)
        offset = int(start) + 1 if isinstance(start, int) else 0
        chosen = self._statement.lines[offset:offset + n + 1]
        nodes = [StatementLine(
            transaction_id=ln.transaction_id, ts=ln.ts, account_id=ln.account_id, rule_id=ln.rule_id,
            rule_type=ln.rule_type, base=decimal_text(ln.base), factor=decimal_text(ln.factor),
            share=Money.of(ln.share), refs=list(ln.refs), _index=offset + i) for i, ln in enumerate(chosen)]
        return connection(nodes, n, lambda node: node._index)


@strawberry.type
class SettlementRun:
    """A settlement run's statement and whether it differs from the previous run's."""

    statement: SettlementStatement
    changed: bool
    previous_digest: str | None
