"""Vendor settlement in storage: transactions from top-ups and invoices, statements kept by digest.

Top-ups come from the ``vendor_topups`` view (the prepaid ledger replaces the
placeholder of migration 0004). Revenue comes from the invoice previews of the
tenant's accounts for the same period label, with the stable transaction ids of
``core.settlement.revenue_transactions``; ``settle`` keeps those in the vendor's
period (its own zone). A statement is stored once per digest; every run is
logged with the digest it produced, so a re-run can be compared with the last.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from usagehub.core.calendars import BillingPeriod
from usagehub.core.invoice import InvoicePreview
from usagehub.core.money import Money, RoundingRule
from usagehub.core.periods import Period
from usagehub.core.settlement import (
    PerUnit,
    RevenuePercent,
    RuleTotal,
    Statement,
    StatementLine,
    Transaction,
    TransactionKind,
    Vendor,
    revenue_transactions,
    statement_document,
)
from usagehub.storage.pool import Connection
from usagehub.storage.rating_catalog import digest_of
from usagehub.storage.sessions import utc

Previewer = Callable[[str, str], Awaitable[InvoicePreview]]


@dataclass(frozen=True, slots=True, kw_only=True)
class SettlementRun:
    """The outcome of a settlement run: the statement, and how it compares with the previous run."""

    statement: Statement
    statement_id: int
    period_label: str
    previous_digest: str | None
    runs: int

    @property
    def changed(self) -> bool:
        """Whether this run's statement differs from the previous run's (False on a first run)."""
        return self.previous_digest is not None and self.previous_digest != self.statement.digest


async def topups(conn: Connection, vendor: Vendor, tenant: str, period: Period) -> list[Transaction]:
    """Top-ups the vendor processed in ``period`` for the tenant's accounts."""
    cur = await conn.execute(
        "SELECT t.account_id, t.amount, t.currency, t.payment_ref, t.at FROM vendor_topups t "
        "JOIN accounts a ON a.account_id = t.account_id WHERE t.vendor_id = %s AND a.tenant = %s "
        "AND t.at >= %s AND t.at < %s", (vendor.id, tenant, period.start, period.end))
    out = []
    rows: list[Any] = await cur.fetchall()
    for account, amount, currency, ref, at in rows:
        # Without a payment reference the row's content is its identity (a redelivery collapses).
        ident = str(ref) if ref else digest_of([account, str(amount), currency, utc(at).isoformat()])[:24]
        out.append(Transaction(id=f"topup:{vendor.id}:{ident}", kind=TransactionKind.TOPUP, ts=utc(at),
                               account_id=str(account), amount=Money(amount=Decimal(amount), currency=str(currency)),
                               processor=vendor.id, refs=(str(ref),) if ref else ()))
    return out


def revenue_products(vendor: Vendor) -> list[str]:
    """The products whose revenue the vendor shares."""
    return sorted({r.product for r in vendor.rules if isinstance(r, RevenuePercent | PerUnit)})


async def revenue(conn: Connection, vendor: Vendor, tenant: str, label: str,
                  preview: Previewer) -> list[Transaction]:
    """Revenue transactions of the invoices (period ``label``) of accounts using the vendor's products."""
    products = revenue_products(vendor)
    if not products:
        return []
    cur = await conn.execute(
        "SELECT DISTINCT r.account_id FROM billing_records r JOIN accounts a USING (account_id) "
        "WHERE a.tenant = %s AND r.period_label = %s AND r.product = ANY(%s) ORDER BY 1", (tenant, label, products))
    accounts = [str(r[0]) for r in await cur.fetchall()]
    out: list[Transaction] = []
    for account in accounts:
        out += [t for t in revenue_transactions(await preview(account, label)) if t.product in products]
    return out


async def store_statement(conn: Connection, statement: Statement, *, tenant: str, vendor_revision: int,
                          label: str, author: str | None) -> SettlementRun:
    """Keep ``statement`` (once per digest), log the run, and compare it with the previous run."""
    cur = await conn.execute(
        "SELECT s.digest FROM settlement_runs r JOIN settlement_statements s USING (statement_id) "
        "WHERE s.tenant = %s AND s.vendor_id = %s AND s.period_label = %s ORDER BY r.run_id DESC LIMIT 1",
        (tenant, statement.vendor_id, label))
    row = await cur.fetchone()
    previous = str(row[0]) if row else None
    doc = statement_document(statement)
    await conn.execute(
        "INSERT INTO settlement_statements (tenant, vendor_id, vendor_revision, period_label, period_start, "
        "period_end, currency, total, digest, document, created_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, "
        "%s::jsonb, %s) ON CONFLICT (tenant, vendor_id, period_label, digest) DO NOTHING",
        (tenant, statement.vendor_id, vendor_revision, label, statement.period.start, statement.period.end,
         statement.currency, statement.total.amount, statement.digest, json.dumps(doc), author))
    cur = await conn.execute("SELECT statement_id FROM settlement_statements WHERE tenant = %s AND vendor_id = %s "
                             "AND period_label = %s AND digest = %s",
                             (tenant, statement.vendor_id, label, statement.digest))
    got = await cur.fetchone()
    assert got is not None
    statement_id = int(got[0])  # type: ignore[call-overload]
    await conn.execute("INSERT INTO settlement_runs (statement_id, run_by) VALUES (%s, %s)", (statement_id, author))
    cur = await conn.execute(
        "SELECT count(*) FROM settlement_runs r JOIN settlement_statements s USING (statement_id) "
        "WHERE s.tenant = %s AND s.vendor_id = %s AND s.period_label = %s", (tenant, statement.vendor_id, label))
    count = await cur.fetchone()
    return SettlementRun(statement=statement, statement_id=statement_id, period_label=label,
                         previous_digest=previous, runs=int(count[0]) if count else 1)  # type: ignore[call-overload]


async def latest_statement(conn: Connection, vendor_id: str, label: str, *, tenant: str) -> SettlementRun | None:
    """The statement of the latest run for a vendor and period, if one ran."""
    cur = await conn.execute(
        "SELECT s.statement_id, s.document, (SELECT count(*) FROM settlement_runs r2 JOIN settlement_statements s2 "
        "USING (statement_id) WHERE s2.tenant = s.tenant AND s2.vendor_id = s.vendor_id "
        "AND s2.period_label = s.period_label) FROM settlement_runs r JOIN settlement_statements s "
        "USING (statement_id) WHERE s.tenant = %s AND s.vendor_id = %s AND s.period_label = %s "
        "ORDER BY r.run_id DESC LIMIT 1", (tenant, vendor_id, label))
    row: Any = await cur.fetchone()
    if row is None:
        return None
    return SettlementRun(statement=statement_of(row[1]), statement_id=int(row[0]), period_label=label,
                         previous_digest=None, runs=int(row[2]))


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def statement_of(doc: dict[str, Any]) -> Statement:
    """A statement from its stored document (``core.settlement.statement_document``)."""
    cur = str(doc["currency"])
    lines = tuple(StatementLine(
        transaction_id=ln["transaction_id"], ts=_ts(ln["ts"]), account_id=ln["account_id"], rule_id=ln["rule_id"],
        rule_type=ln["rule_type"], base=Decimal(ln["base"]), factor=Decimal(ln["factor"]),
        share=Money(amount=Decimal(ln["share"]), currency=cur), refs=tuple(ln["refs"])) for ln in doc["lines"])
    totals = tuple(RuleTotal(rule_id=t["rule_id"], transactions=int(t["transactions"]), base=Decimal(t["base"]),
                             share=Money(amount=Decimal(t["share"]), currency=cur)) for t in doc["totals"])
    return Statement(vendor_id=doc["vendor_id"], period=BillingPeriod(start=_ts(doc["period"]["start"]),
                                                                      end=_ts(doc["period"]["end"])),
                     currency=cur, rounding=RoundingRule(doc["rounding"]), lines=lines, totals=totals,
                     total_exact=Money(amount=Decimal(doc["total_exact"]), currency=cur),
                     total=Money(amount=Decimal(doc["total"]), currency=cur), digest=doc["digest"])
