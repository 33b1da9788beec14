"""RatingService: price plans, VAT, invoice previews, exports, vendor settlement and the prepaid pricing port.

Thin over the pure rating core (``usagehub/core``): it reads the catalogue
(``storage.rating_catalog``), turns stored usage into core usage items
(``storage.rating_usage``) and keeps settlement statements
(``storage.rating_settlement``). See docs/rating.md, "Running it".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from psycopg import AsyncCursor
from psycopg_pool import AsyncConnectionPool

from usagehub.core.billing import RecordKind
from usagehub.core.calendars import require_aware, zone
from usagehub.core.invoice import InvoicePreview, invoice_to_csv, invoice_to_json, preview_invoice
from usagehub.core.money import exact
from usagehub.core.periods import period_of
from usagehub.core.rating import Account, select_plan
from usagehub.core.settlement import Vendor, settle, statement_to_csv, statement_to_json
from usagehub.core.tariffs import PlanBook, PricePlan, TimeOfUse, UsagePrice, parse_plans
from usagehub.core.tiers import graduated_split, volume_band
from usagehub.core.tou import window_of
from usagehub.core.vat import VatTable, parse_vat_table
from usagehub.errors import DomainError
from usagehub.storage import rating_catalog as catalog
from usagehub.storage import rating_settlement as settlement
from usagehub.storage.billing import period_by_label
from usagehub.storage.pool import Connection, mapped_errors
from usagehub.storage.rating_adjust import adjustment_lines
from usagehub.storage.rating_sums import summed_usage_items
from usagehub.storage.rating_usage import (
    billing_period,
    period_records,
)

Clock = Callable[[], datetime]
FORMATS = {"json": "application/json", "csv": "text/csv; charset=utf-8"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Unpriced:
    """Billed usage of a product no plan prices for the account (e.g. a max-demand gauge): not invoiced."""

    product: str
    quantity: Decimal
    unit: str
    record_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredInvoice:
    """An account's invoice preview for a period label, and the usage no plan prices."""

    label: str
    tenant: str
    preview: InvoicePreview
    unpriced: tuple[Unpriced, ...]


def _priced(book: PlanBook, account: Account, product: str) -> bool:
    return product in account.plan_ids or any(p.product == product and p.market == account.market
                                              for p in book.plans)


async def account_of(conn: Connection, account_id: str, tenant: str | None) -> tuple[Account, str]:
    """The rating view of an account (market, currency, zone, chosen plans) and its tenant."""
    cur = await conn.execute(
        "SELECT a.tenant, a.market, a.currency, a.timezone, "
        "coalesce((SELECT array_agg(ARRAY[p.product, p.plan_id]) FROM account_plans p "
        "WHERE p.account_id = a.account_id), '{}') "
        "FROM accounts a WHERE a.account_id = %s AND (%s::text IS NULL OR a.tenant = %s)",
        (account_id, tenant, tenant))
    row = await cur.fetchone()
    if row is None:
        raise DomainError("UNKNOWN_ACCOUNT", f"account {account_id!r} does not exist")
    pairs: list[list[str]] = row[4]  # type: ignore[assignment]
    plan_ids = {str(product): str(plan) for product, plan in pairs}
    account = Account(account_id=account_id, market=str(row[1]), currency=str(row[2]), timezone=str(row[3]),
                      plan_ids=plan_ids, products=frozenset(plan_ids))
    return account, str(row[0])


class RatingService:
    """Rating over the pool; caches the catalogue per tenant until any catalogue change."""

    def __init__(self, pool: AsyncConnectionPool, *, clock: Clock | None = None) -> None:
        self.pool = pool
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self._books: dict[str, tuple[int, PlanBook]] = {}
        self._vat: tuple[int, VatTable] | None = None

    async def start(self) -> bool:
        """Load the shipped VAT table if none is stored (hub start, CLI); True when it did."""
        async with mapped_errors(), self.pool.connection() as conn, conn.transaction():
            return await catalog.ensure_vat(conn)

    async def catalogue(self, conn: Connection, tenant: str, gen: int | None = None) -> tuple[PlanBook, VatTable]:
        """The plan book of ``tenant`` and the VAT table in force (cached per catalogue generation)."""
        if gen is None:
            gen = await catalog.generation(conn)
        cached = self._books.get(tenant)
        if cached is None or cached[0] != gen:
            cached = (gen, await catalog.load_book(conn, tenant))
            self._books[tenant] = cached
        if self._vat is None or self._vat[0] != gen:
            stored = await catalog.load_vat(conn)
            if stored is None:
                raise DomainError("NO_VAT_TABLE", "no VAT table is loaded: run `usagehub vat load FILE`")
            self._vat = (gen, stored[1])
        return cached[1], self._vat[1]

    # --- plans and VAT ---------------------------------------------------------------------------

    async def set_plans(self, book: PlanBook, *, tenant: str = "default", source: str = "",
                        author: str | None = None, replace: bool = False) -> list[catalog.PlanChange]:
        """Store a validated plan book as new revisions where it differs (``replace`` retires the rest)."""
        today = self.clock().astimezone(UTC).date()
        async with mapped_errors(), self.pool.connection() as conn, conn.transaction():
            return await catalog.store_book(conn, book, tenant=tenant, today=today, source=source, author=author,
                                            replace=replace)

    async def load_plans(self, text: str, source: str, *, tenant: str = "default", author: str | None = None,
                         replace: bool = False) -> list[catalog.PlanChange]:
        """Parse a tariff file (ConfigError names file, field, line) and store it."""
        return await self.set_plans(parse_plans(text, source), tenant=tenant, source=source, author=author,
                                    replace=replace)

    async def plans(self, *, tenant: str = "default", product: str | None = None,
                    market: str | None = None) -> list[catalog.StoredPlan]:
        """The plans in force, optionally of one product and market."""
        async with mapped_errors(), self.pool.connection() as conn:
            plans = await catalog.current_plans(conn, tenant)
        return [p for p in plans if (product is None or p.plan.product == product)
                and (market is None or p.plan.market == market)]

    async def assign_plan(self, account_id: str, plan_id: str, *, tenant: str = "default",
                          author: str | None = None) -> tuple[str, str, str]:
        """Choose ``plan_id`` for its product on an account; (account, product, plan)."""
        async with mapped_errors(), self.pool.connection() as conn, conn.transaction():
            account, _ = await account_of(conn, account_id, tenant)
            found = [p for p in await catalog.current_plans(conn, tenant) if p.plan.id == plan_id]
            if not found:
                raise DomainError("UNKNOWN_PLAN", f"no price plan {plan_id!r}")
            plan = found[0].plan
            if plan.currency != account.currency:
                raise DomainError("PLAN_MISMATCH", f"plan {plan_id!r} prices in {plan.currency}, account "
                                  f"{account_id!r} pays in {account.currency}")
            await conn.execute(
                "INSERT INTO account_plans (account_id, product, plan_id, assigned_by) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (account_id, product) DO UPDATE SET plan_id = EXCLUDED.plan_id, "
                "assigned_by = EXCLUDED.assigned_by, assigned_at = now()", (account_id, plan.product, plan_id, author))
            return account_id, plan.product, plan_id

    async def load_vat(self, text: str, source: str, *, author: str | None = None) -> tuple[int, bool]:
        """Parse a VAT rate file and make it the table in force; (revision, changed)."""
        table = parse_vat_table(text, source)
        async with mapped_errors(), self.pool.connection() as conn, conn.transaction():
            return await catalog.store_vat(conn, table, source=source, author=author)

    async def vat_table(self) -> VatTable:
        """The VAT table in force."""
        async with mapped_errors(), self.pool.connection() as conn:
            return (await self.catalogue(conn, "default"))[1]

    # --- invoices --------------------------------------------------------------------------------

    async def invoice_preview(self, account_id: str, period: str, *, tenant: str | None = None) -> StoredInvoice:
        """The invoice preview of an account for period ``YYYY-MM`` (its zone) from the stored usage."""
        async with mapped_errors(), self.pool.connection() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            account, owner = await account_of(conn, account_id, tenant)
            book, vat = await self.catalogue(conn, owner)
            span = period_by_label(period, ZoneInfo(account.timezone))
            records = await period_records(conn, account_id, span)
            priced = [r for r in records if _priced(book, account, r.product)]
            unpriced = tuple(Unpriced(product=r.product, quantity=r.quantity, unit=r.unit, record_ids=(r.record_id,))
                             for r in records if r not in priced and r.quantity != 0)
            items = await summed_usage_items(conn, priced, span, timezone=account.timezone, book=book)
            adjustments = [r for r in priced if r.kind is RecordKind.ADJUSTMENT]
            adj = await adjustment_lines(conn, account, span, adjustments, book, vat)
            preview = preview_invoice(items, book, vat, account, billing_period(span), adjustments=adj)
        return StoredInvoice(label=span.label, tenant=owner, preview=preview, unpriced=unpriced)

    async def invoice_export(self, account_id: str, period: str, fmt: str = "json", *,
                             tenant: str | None = None) -> str:
        """The invoice preview as the core's JSON or CSV export (``usagehub.invoice-preview/2``)."""
        if fmt not in FORMATS:
            raise DomainError("BAD_FORMAT", f"format must be one of {', '.join(FORMATS)}")
        invoice = await self.invoice_preview(account_id, period, tenant=tenant)
        return invoice_to_json(invoice.preview) if fmt == "json" else invoice_to_csv(invoice.preview)

    # --- vendors and settlement ------------------------------------------------------------------

    async def register_vendors(self, vendors: list[Vendor], *, tenant: str = "default",
                               author: str | None = None) -> list[tuple[Vendor, int]]:
        """Store vendors (new revisions where they differ)."""
        async with mapped_errors(), self.pool.connection() as conn, conn.transaction():
            return await catalog.store_vendors(conn, vendors, tenant=tenant, author=author)

    async def vendors(self, *, tenant: str = "default") -> list[tuple[Vendor, int]]:
        """The vendors in force with their revisions, by id."""
        async with mapped_errors(), self.pool.connection() as conn:
            stored = await catalog.load_vendors(conn, tenant)
        return [(v, rev) for _, (rev, v) in sorted(stored.items())]

    async def settle(self, vendor_id: str, period: str, *, tenant: str = "default",
                     author: str | None = None) -> settlement.SettlementRun:
        """Settle a vendor for period ``YYYY-MM`` (its zone); store the statement by digest and log the run."""
        async def preview(account: str, label: str) -> InvoicePreview:
            return (await self.invoice_preview(account, label, tenant=tenant)).preview

        async with mapped_errors(), self.pool.connection() as conn:
            stored = await catalog.load_vendors(conn, tenant)
            if vendor_id not in stored:
                raise DomainError("UNKNOWN_VENDOR", f"no vendor {vendor_id!r}")
            revision, vendor = stored[vendor_id]
            span = period_by_label(period, zone(vendor.timezone))
            transactions = [*await settlement.topups(conn, vendor, tenant, span),
                            *await settlement.revenue(conn, vendor, tenant, span.label, preview)]
            statement = settle(vendor, billing_period(span), transactions)
            async with conn.transaction():
                return await settlement.store_statement(conn, statement, tenant=tenant, vendor_revision=revision,
                                                        label=span.label, author=author)

    async def statement(self, vendor_id: str, period: str, *,
                        tenant: str = "default") -> settlement.SettlementRun | None:
        """The statement of the latest settlement run of a vendor and period (None if none ran)."""
        async with mapped_errors(), self.pool.connection() as conn:
            return await settlement.latest_statement(conn, vendor_id, period, tenant=tenant)

    async def statement_export(self, vendor_id: str, period: str, fmt: str = "json", *,
                               tenant: str = "default") -> str | None:
        """The latest statement as the core's JSON or CSV export (None if the vendor was never settled)."""
        if fmt not in FORMATS:
            raise DomainError("BAD_FORMAT", f"format must be one of {', '.join(FORMATS)}")
        run = await self.statement(vendor_id, period, tenant=tenant)
        if run is None:
            return None
        return statement_to_json(run.statement) if fmt == "json" else statement_to_csv(run.statement)

    # --- the pricing port for prepaid ------------------------------------------------------------

    async def usage_charge(self, conn: Connection, *, account_id: str, product: str, quantity: Decimal,
                           at: datetime) -> Decimal:
        """The gross price (net + VAT, exact, not rounded) of ``quantity`` of ``product`` used at ``at``.

        The net is the plan's usage price in force on the local date of ``at``: for
        graduated tiers the slices from the account's period-to-date quantity (usage
        points of the product starting before ``at`` in the account's period), for
        volume tiers the band that quantity plus ``quantity`` reaches, for time of use
        the window of ``at``. Standing charges and minimums are not usage. VAT is the
        rate of the plan's category in the account's market on that date. Errors are
        DomainError: NO_PLAN, AMBIGUOUS_PLAN, PLAN_MISMATCH, NO_PLAN_IN_FORCE,
        NO_VAT_RATE, UNKNOWN_ACCOUNT, TOU_UNCOVERED.
        """
        (charge,) = await self.usage_charges(conn, [(account_id, product, quantity)], at=at)
        if isinstance(charge, DomainError):
            raise charge
        return charge

    async def usage_charges(self, conn: Connection, items: Sequence[tuple[str, str, Decimal]], *,
                            at: datetime) -> list[Decimal | DomainError]:
        """:meth:`usage_charge` of many ``(account, product, quantity)`` at once: a few round trips in all.

        Each answer is the charge or the DomainError that item alone would raise.
        """
        require_aware(at, "usage time")
        # the accounts and the catalogue generation in one round trip when ``conn`` is in a pipeline
        reading = await send_accounts(conn, {a for a, _, _ in items})
        gen = await catalog.generation(conn)
        return await self._charges(conn, items, at, gen, await read_accounts(reading))

    async def usage_charges_known(self, conn: Connection, items: Sequence[tuple[str, str, Decimal]], *,
                                  at: datetime, generation: int,
                                  account_rows: Sequence[Sequence[Any]]) -> list[Decimal | DomainError]:
        """:meth:`usage_charges` with the catalogue generation and the account rows read already.

        ``account_rows`` are ``(id, tenant, market, currency, timezone, [[product, plan_id], ...])``, as a
        prepaid batch reads them under its lock (``prepaid_batch_read``): no round trip of their own.
        """
        require_aware(at, "usage time")
        return await self._charges(conn, items, at, generation, accounts_from_rows(account_rows))

    async def _charges(self, conn: Connection, items: Sequence[tuple[str, str, Decimal]], at: datetime, gen: int,
                       accounts: dict[str, tuple[Account, str]]) -> list[Decimal | DomainError]:
        books = {t: await self.catalogue(conn, t, gen) for t in sorted({t for _, t in accounts.values()})}
        priced: list[tuple[Account, PlanBook, VatTable, PricePlan, UsagePrice] | DomainError] = []
        for account_id, product, _ in items:
            try:
                account, tenant = accounts.get(account_id) or _unknown(account_id)
                book, vat = books[tenant]
                priced.append((account, book, vat, *_usage_price(book, account, product, at)))
            except DomainError as err:
                priced.append(err)
        before = await _period_to_date(conn, [(i[0], i[1], p[0].timezone) for i, p in zip(items, priced, strict=True)
                                              if not isinstance(p, DomainError) and p[4].type in _TIERED], at)
        out: list[Decimal | DomainError] = []
        for (account_id, product, quantity), p in zip(items, priced, strict=True):
            if isinstance(p, DomainError):
                out.append(p)
                continue
            try:
                out.append(_gross(*p, quantity, at, before.get((account_id, product), Decimal(0))))
            except DomainError as err:
                out.append(err)
        return out


_TIERED = ("graduated", "volume")  # prices that depend on the period-to-date quantity


def _unknown(account_id: str) -> tuple[Account, str]:
    raise DomainError("UNKNOWN_ACCOUNT", f"account {account_id!r} does not exist")


async def send_accounts(conn: Connection, account_ids: set[str]) -> AsyncCursor[Any]:
    """Send :func:`account_of` of many accounts in one query; :func:`read_accounts` reads it."""
    return await conn.execute(
        "SELECT a.account_id, a.tenant, a.market, a.currency, a.timezone, "
        "coalesce((SELECT array_agg(ARRAY[p.product, p.plan_id]) FROM account_plans p "
        "WHERE p.account_id = a.account_id), '{}') FROM accounts a WHERE a.account_id = ANY(%s)",
        (sorted(account_ids),))


async def read_accounts(cur: AsyncCursor[Any]) -> dict[str, tuple[Account, str]]:
    """The accounts :func:`send_accounts` asked for (missing accounts are absent)."""
    return accounts_from_rows(await cur.fetchall())


def accounts_from_rows(rows: Sequence[Sequence[Any]]) -> dict[str, tuple[Account, str]]:
    """Accounts (and their tenants) from rows ``(id, tenant, market, currency, timezone, [[product, plan]])``."""
    found: dict[str, tuple[Account, str]] = {}
    for row in rows:
        pairs: list[list[str]] = row[5]
        plan_ids = {str(product): str(plan) for product, plan in pairs}
        found[str(row[0])] = (Account(account_id=str(row[0]), market=str(row[2]), currency=str(row[3]),
                                      timezone=str(row[4]), plan_ids=plan_ids, products=frozenset(plan_ids)),
                              str(row[1]))
    return found


def _usage_price(book: PlanBook, account: Account, product: str, at: datetime) -> tuple[PricePlan, UsagePrice]:
    plan = select_plan(book, account, product)
    day = at.astimezone(zone(account.timezone)).date()
    version = plan.version_on(day)
    price = version.usage_price if version else None
    if price is None:
        raise DomainError("NO_PLAN_IN_FORCE", f"no usage price of plan {plan.id!r} in force on {day}")
    return plan, price


async def _period_to_date(conn: Connection, wanted: list[tuple[str, str, str]],
                          at: datetime) -> dict[tuple[str, str], Decimal]:
    """Usage points of each (account, product, zone) from the start of its period up to ``at``, in one query."""
    keys = sorted(set(wanted))
    if not keys:
        return {}
    starts = [period_of(at, zone(tz)).start for _, _, tz in keys]
    cur = await conn.execute(
        "SELECT k.a, k.p, (SELECT coalesce(sum(value), 0) FROM session_points WHERE account_id = k.a "
        "AND product = k.p AND kind = 'usage' AND start_ts >= k.s AND start_ts < %s) "
        "FROM unnest(%b::text[], %b::text[], %b::timestamptz[]) AS k(a, p, s)",
        (at, [k[0] for k in keys], [k[1] for k in keys], starts))
    return {(str(r[0]), str(r[1])): Decimal(r[2]) for r in await cur.fetchall()}  # type: ignore[arg-type]


def _gross(account: Account, book: PlanBook, vat: VatTable, plan: PricePlan, price: UsagePrice, quantity: Decimal,
           at: datetime, before: Decimal) -> Decimal:
    """Net (by the price's type) plus VAT of the plan's category in the account's market."""
    tz = zone(account.timezone)
    day = at.astimezone(tz).date()
    rate = vat.rate_for(account.market, plan.vat_category, day).rate
    with exact():
        if price.type == "flat":
            net = quantity * price.price
        elif price.type == "graduated":
            net = sum((q * price.tiers[i].price for i, q in graduated_split(price.tiers, before,
                                                                            before + quantity)), Decimal(0))
        elif price.type == "volume":
            net = quantity * volume_band(price.tiers, before + quantity).price
        else:
            assert isinstance(price, TimeOfUse)
            net = quantity * window_of(price, at, tz, book.holidays(price.calendar))[1]
        return net * (100 + rate) / 100


__all__ = ["RatingService", "StoredInvoice", "Unpriced", "account_of"]
