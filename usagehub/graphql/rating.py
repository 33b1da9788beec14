"""Price plans, VAT, invoice previews and vendor settlement (issue 4).

Reads: ``pricePlans``, ``vatRates``, ``vendors`` for every role; ``invoicePreview``
and ``settlementStatement`` for admin, billing and analytics (analytics sees the
aggregates only: the drill-down fields refuse it). Writes (``setPricePlan``,
``assignPlan``, ``registerVendor``, ``runSettlement``) need an admin or billing key.
"""

from __future__ import annotations

from typing import Any

import strawberry
from pydantic import ValidationError
from strawberry.scalars import JSON
from strawberry.types import Info

from usagehub.core.settlement import Vendor, VendorBook, parse_vendors
from usagehub.core.tariffs import PlanBook, parse_plans
from usagehub.errors import ConfigError
from usagehub.graphql import rating_types as rt
from usagehub.graphql.auth import BILLING_WRITE, READ_ALL, api_error, domain_errors, require, require_personal
from usagehub.graphql.pagination import Connection, connection, decode_cursor, page_size
from usagehub.rating.service import RatingService

INVOICE_READ = ("admin", "billing", "analytics")


def _service(info: Info) -> RatingService:
    service = info.context.services.rating
    if service is None:
        raise api_error("UNAVAILABLE", "rating is not running in this hub")
    assert isinstance(service, RatingService)
    return service


def _author(info: Info) -> str:
    return str(info.context.principal.key_id)


def _invalid(err: ConfigError | ValidationError, what: str) -> Exception:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return api_error("INVALID_" + what, f"{where}: {first['msg']}")
    return api_error("INVALID_" + what, str(err))


def _book(yaml: str | None, plan: Any) -> PlanBook:
    if (yaml is None) == (plan is None):
        raise api_error("BAD_REQUEST", "give either yaml (a tariff file) or plan (one plan as JSON)")
    try:
        if yaml is not None:
            return parse_plans(yaml, "setPricePlan")
        return PlanBook.model_validate({"plans": [plan]})
    except (ConfigError, ValidationError) as err:
        raise _invalid(err, "PLAN") from err


def _vendors(yaml: str | None, vendor: Any) -> list[Vendor]:
    if (yaml is None) == (vendor is None):
        raise api_error("BAD_REQUEST", "give either yaml (a vendor file) or vendor (one vendor as JSON)")
    try:
        if yaml is not None:
            return parse_vendors(yaml, "registerVendor").vendors
        return VendorBook.model_validate({"vendors": [vendor]}).vendors
    except (ConfigError, ValidationError) as err:
        raise _invalid(err, "VENDOR") from err


@strawberry.type
class RatingQuery:
    """Rating reads."""

    @strawberry.field(description="Price plans in force (latest revision), by product and market.")
    async def price_plans(self, info: Info, product: str | None = None,
                          market: str | None = None) -> list[rt.PricePlan]:
        tenant = require(info, *READ_ALL)
        with domain_errors():
            plans = await _service(info).plans(tenant=tenant, product=product, market=market)
        return [rt.PricePlan.of(p) for p in plans]

    @strawberry.field(description="VAT rates in force, with validity and source, of one or every market.")
    async def vat_rates(self, info: Info, market: str | None = None) -> list[rt.VatRate]:
        require(info, *READ_ALL)
        with domain_errors():
            table = await _service(info).vat_table()
        return rt.vat_rates(table, market)

    @strawberry.field(description="An account's invoice preview for a period (YYYY-MM in its zone).")
    async def invoice_preview(self, info: Info, account_id: str, period: str) -> rt.InvoicePreview:
        tenant = await require_personal(info, *INVOICE_READ)
        with domain_errors():
            stored = await _service(info).invoice_preview(account_id, period, tenant=tenant)
        return rt.InvoicePreview.of(stored)

    @strawberry.field(description="Vendors (payment providers, service partners) with their share rules.")
    async def vendors(self, info: Info, first: int = 50, after: str | None = None) -> Connection[rt.SettlementVendor]:
        tenant = require(info, *READ_ALL)
        n = page_size(first)
        start = decode_cursor(after)
        with domain_errors():
            vendors = await _service(info).vendors(tenant=tenant)
        chosen = [rt.SettlementVendor.of(v, rev) for v, rev in vendors if start is None or v.id > str(start)]
        return connection(chosen[:n + 1], n, lambda v: v.id)

    @strawberry.field(description="The statement of a vendor's latest settlement run for a period (YYYY-MM).")
    async def settlement_statement(self, info: Info, vendor_id: str,
                                   period: str) -> rt.SettlementStatement | None:
        tenant = require(info, *INVOICE_READ)
        with domain_errors():
            run = await _service(info).statement(vendor_id, period, tenant=tenant)
        return None if run is None else rt.SettlementStatement.of(run)


@strawberry.type
class RatingMutation:
    """Rating changes: billing and admin keys only."""

    @strawberry.mutation(description="Add or revise price plans: a tariff file (yaml) or one plan (JSON). "
                                     "A change adds a revision; versions in force cannot change.")
    async def set_price_plan(self, info: Info, yaml: str | None = None, plan: JSON | None = None,
                             replace: bool = False) -> list[rt.PlanChange]:
        tenant = require(info, *BILLING_WRITE)
        book = _book(yaml, plan)
        with domain_errors():
            changes = await _service(info).set_plans(book, tenant=tenant, source="graphql", author=_author(info),
                                                     replace=replace)
        return [rt.PlanChange.of(c) for c in changes]

    @strawberry.mutation(description="Use a plan for its product on an account.")
    async def assign_plan(self, info: Info, account_id: str, plan_id: str) -> rt.AccountPlan:
        tenant = require(info, *BILLING_WRITE)
        with domain_errors():
            account, product, plan = await _service(info).assign_plan(account_id, plan_id, tenant=tenant,
                                                                      author=_author(info))
        return rt.AccountPlan(account_id=account, product=product, plan_id=plan)

    @strawberry.mutation(description="Register or revise vendors: a vendor file (yaml) or one vendor (JSON).")
    async def register_vendor(self, info: Info, yaml: str | None = None,
                              vendor: JSON | None = None) -> list[rt.SettlementVendor]:
        tenant = require(info, *BILLING_WRITE)
        vendors = _vendors(yaml, vendor)
        with domain_errors():
            stored = await _service(info).register_vendors(vendors, tenant=tenant, author=_author(info))
        return [rt.SettlementVendor.of(v, rev) for v, rev in stored]

    @strawberry.mutation(description="Settle a vendor for a period (YYYY-MM); a re-run gives the same digest.")
    async def run_settlement(self, info: Info, vendor_id: str, period: str) -> rt.SettlementRun:
        tenant = require(info, *BILLING_WRITE)
        with domain_errors():
            run = await _service(info).settle(vendor_id, period, tenant=tenant, author=_author(info))
        return rt.SettlementRun(statement=rt.SettlementStatement.of(run), changed=run.changed,
                                previous_digest=run.previous_digest)


# Strawberry types merged into the root Query, Mutation and Subscription by schema.py.
QUERIES: tuple[type, ...] = (RatingQuery,)
MUTATIONS: tuple[type, ...] = (RatingMutation,)
SUBSCRIPTIONS: tuple[type, ...] = ()
