"""The root Query and Mutation types and the schema with its protective extensions."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.tools import merge_types
from strawberry.types import Info

from usagehub.errors import DomainError
from usagehub.graphql import analytics, gateways, operations, prepaid, rating
from usagehub.graphql import billing as b
from usagehub.graphql import types as t
from usagehub.graphql.auth import (
    MANAGE_REGISTRY,
    QUARANTINE_WRITE,
    READ_ALL,
    api_error,
    domain_errors,
    own,
    require,
    require_personal,
)
from usagehub.graphql.bounded import BoundedDocument
from usagehub.graphql.cost import Limits
from usagehub.graphql.pagination import Connection, connection, decode_cursor, page_size
from usagehub.storage.queries import HUB_TENANT


def _services(info: Info) -> Any:
    return info.context.services


@contextlib.contextmanager
def _taken(kind: str, ident: str) -> Iterator[None]:
    """Ids are unique across tenants: one held by another tenant is "taken", without naming that tenant."""
    try:
        yield
    except DomainError as err:
        if err.code != "FORBIDDEN":
            raise
        raise api_error("ID_TAKEN", f"{kind} id {ident[:200]!r} is not available; choose another") from err


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None:
        raise api_error("BAD_REQUEST", f"{name} needs a time zone (ISO 8601 with offset)")
    return value


@strawberry.input
class AccountInput:
    """Fields of an account to create or update."""

    id: str
    name: str = ""
    market: str = "DE"
    currency: str = "EUR"
    timezone: str = "UTC"
    prepaid: bool = False


@strawberry.input
class DeviceInput:
    """Fields of a device to register or update."""

    id: str
    profile_id: str | None = None
    name: str = ""
    address: str | None = None
    port: int | None = None


@strawberry.type
class CoreQuery:
    """Read access; every field checks the caller's role and tenant."""

    @strawberry.field(description="Accounts, searchable by id or name.")
    async def accounts(self, info: Info, first: int = 50, after: str | None = None,
                       search: str | None = None) -> Connection[t.Account]:
        tenant = await require_personal(info)
        n = page_size(first)
        rows = await _services(info).registry.accounts(tenant=tenant, after=decode_cursor(after), limit=n + 1,
                                                       search=search)
        return connection([t.Account.of(r) for r in rows], n, lambda a: a.id)

    @strawberry.field
    async def account(self, info: Info, id: str) -> t.Account | None:
        tenant = await require_personal(info)
        row = await _services(info).registry.account(id, tenant=tenant)
        return t.Account.of(row) if row else None

    @strawberry.field
    async def devices(self, info: Info, first: int = 50, after: str | None = None) -> Connection[t.Device]:
        tenant = await require_personal(info)
        n = page_size(first)
        rows = await _services(info).registry.devices(tenant=tenant, after=decode_cursor(after), limit=n + 1)
        return connection([t.Device.of(r) for r in rows], n, lambda d: d.id)

    @strawberry.field(description="Bindings of a device or an account (validity ranges) of the caller's tenant.")
    async def bindings(self, info: Info, device_id: str | None = None,
                       account_id: str | None = None) -> list[t.Binding]:
        tenant = await require_personal(info)
        rows = await _services(info).reads.bindings(tenant=tenant, device_id=device_id, account_id=account_id)
        return [t.Binding(id=str(r["binding_id"]), device_id=r["device_id"], account_id=r["account_id"],
                          valid_from=r["valid_from"], valid_to=r["valid_to"]) for r in rows]

    @strawberry.field(description="Raw events of one device in device-time order (newestFirst: latest first).")
    async def events(self, info: Info, device_id: str, meter: str | None = None,
                     since: datetime | None = None, until: datetime | None = None, first: int = 100,
                     after: str | None = None, newest_first: bool = False) -> Connection[t.UsageEvent]:
        tenant = require(info, "admin", "operator", "billing")
        n = page_size(first)
        pos = decode_cursor(after)
        after_key = (datetime.fromisoformat(pos[0]), pos[1], pos[2]) if isinstance(pos, list) else None
        rows = await _services(info).reads.events(
            tenant=tenant, device_id=device_id, meter=meter, since=since and _aware(since, "since"),
            until=until and _aware(until, "until"), after=after_key, limit=n + 1, newest_first=newest_first)
        return connection([t.UsageEvent.of(r) for r in rows], n,
                          lambda e: [e.ts.isoformat(), e.meter, e.event_id])

    @strawberry.field(description="Usage of an account per meter in time buckets of the account's zone.")
    async def usage(self, info: Info, account_id: str, since: datetime, until: datetime,
                    bucket: t.Bucket = t.Bucket.DAY, meter: str | None = None) -> list[t.UsageBucket]:
        tenant = await require_personal(info)
        rows = await _services(info).reads.usage(
            tenant=tenant, account_id=account_id, bucket=bucket.value, since=_aware(since, "since"),
            until=_aware(until, "until"), meter=meter)
        return [t.UsageBucket(start=r.start, meter=r.meter, quantity=r.quantity, unit=r.unit) for r in rows]

    @strawberry.field(description="Messages kept in quarantine with raw bytes and reason: those of the tenant's "
                                  "devices (the hub's own tenant also sees those of no registered device).")
    async def quarantine(self, info: Info, reason: str | None = None, first: int = 50, after: str | None = None,
                         include_replayed: bool = False, device_id: str | None = None, since: datetime | None = None,
                         until: datetime | None = None) -> Connection[t.QuarantineItem]:
        tenant = require(info, "admin", "operator")
        n = page_size(first)
        pos = decode_cursor(after)
        rows = await _services(info).reads.quarantine(tenant=tenant, reason=reason,
                                                      after=int(str(pos)) if pos else None, limit=n + 1,
                                                      include_replayed=include_replayed, device_id=device_id,
                                                      since=since and _aware(since, "since"),
                                                      until=until and _aware(until, "until"))
        return connection([t.QuarantineItem.of(r) for r in rows], n, lambda q: int(q.id))

    @strawberry.field(description="Open quarantine items of the tenant per reason; the process-wide counters "
                                  "only for keys of the hub's own tenant (null otherwise).")
    async def ingest_stats(self, info: Info) -> t.IngestStats:
        tenant = require(info, *READ_ALL)
        services = _services(info)
        counts = await services.reads.quarantine_counts(tenant=tenant)
        own = tenant == HUB_TENANT  # the counters span every tenant's devices: the hub's own tenant only
        totals = await services.reads.ingest_totals() if own else {}
        return t.IngestStats(**{k: totals.get(k, 0) if own else None for k in t.INGEST_COUNTERS},
                             quarantine_open=[t.ReasonCount(reason=k, count=v) for k, v in counts.items()])

    sessions: Connection[b.BillingSession] = strawberry.field(
        resolver=b.sessions, description="Billable sessions of an account starting in [since, until).")
    billing_records: Connection[b.BillingRecord] = strawberry.field(
        resolver=b.billing_records, description="Billing records of an account (period YYYY-MM, status).")
    billing_record: b.BillingRecord | None = strawberry.field(
        resolver=b.billing_record, description="One billing record; drill down to sessions and events.")
    meter_inspection: list[b.MeterInspection] = strawberry.field(
        resolver=b.meter_inspection, description="Last reading, current-period total and last event per meter.")


@strawberry.type
class CoreMutation:
    """Changes; analytics keys may change nothing, billing keys may not touch the registry."""

    @strawberry.mutation
    async def register_account(self, info: Info, account: AccountInput) -> t.Account:
        tenant = require(info, *MANAGE_REGISTRY)
        with domain_errors(), _taken("account", account.id):
            row = await _services(info).registry.upsert_account(
                account_id=account.id, tenant=tenant, name=account.name, market=account.market,
                currency=account.currency, timezone=account.timezone, prepaid=account.prepaid)
        return t.Account.of(row)

    @strawberry.mutation
    async def register_device(self, info: Info, device: DeviceInput) -> t.Device:
        tenant = require(info, *MANAGE_REGISTRY)
        with domain_errors(), _taken("device", device.id):
            row = await _services(info).registry.upsert_device(
                device_id=device.id, tenant=tenant, profile_id=device.profile_id, name=device.name,
                address=device.address, port=device.port)
        return t.Device.of(row)

    @strawberry.mutation(description="Bind a device to an account from an instant; an open binding closes then.")
    async def bind_device(self, info: Info, device_id: str, account_id: str, valid_from: datetime,
                          valid_to: datetime | None = None) -> t.Binding:
        tenant = require(info, *MANAGE_REGISTRY)
        await own(info, tenant, "device", device_id)
        await own(info, tenant, "account", account_id)
        with domain_errors():
            row = await _services(info).registry.bind(
                device_id=device_id, account_id=account_id, valid_from=_aware(valid_from, "validFrom"),
                valid_to=valid_to and _aware(valid_to, "validTo"), tenant=tenant)
        return t.Binding.of(row)

    @strawberry.mutation(description="Feed quarantined messages through the pipeline again (after a fix).")
    async def replay_quarantine(self, info: Info, ids: list[strawberry.ID]) -> list[t.ReplayResult]:
        tenant = require(info, *QUARANTINE_WRITE)
        if len(ids) > 1000:
            raise api_error("BAD_REQUEST", "replay at most 1000 items at once")
        for ident in ids:
            await own(info, tenant, "quarantine", str(ident))
        with domain_errors():
            results = await _services(info).replay([int(i) for i in ids])
        return [t.ReplayResult(id=str(r[0]), outcome=r[1], reason=r[2]) for r in results]

    mark_billed: list[b.BillingRecord] = strawberry.mutation(
        resolver=b.mark_billed, description="Bill records by id; billed records are final.")
    run_billing: list[b.BillingRecord] = strawberry.mutation(
        resolver=b.run_billing, description="Close a period (YYYY-MM) and bill its records.")
    submit_correction: b.Correction = strawberry.mutation(
        resolver=b.submit_correction, description="A correction with a reason; the author is the API key.")


class _Schema(strawberry.Schema):
    """Logs only unexpected errors: refusals with a code are answers, not incidents."""

    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        unexpected = [e for e in errors if not (e.extensions or {}).get("code")
                      and not isinstance(e.original_error, GraphQLError | None.__class__)]
        if unexpected:
            super().process_errors(unexpected, execution_context)


# Each room (rating, prepaid, analytics) owns one module exporting QUERIES, MUTATIONS and SUBSCRIPTIONS:
# tuples of strawberry types whose fields are merged into the root types here.
ROOMS = (rating, prepaid, analytics, operations, gateways)
Query = merge_types("Query", (CoreQuery, *(q for room in ROOMS for q in room.QUERIES)))
Mutation = merge_types("Mutation", (CoreMutation, *(m for room in ROOMS for m in room.MUTATIONS)))
_SUBSCRIPTIONS = tuple(s for room in ROOMS for s in room.SUBSCRIPTIONS)
Subscription = merge_types("Subscription", _SUBSCRIPTIONS) if _SUBSCRIPTIONS else None


def build_schema(max_depth: int = 12, limits: Limits | None = None) -> strawberry.Schema:
    """The schema with cached, bounded parsing (tokens) and validation (depth, aliases, fields, cost)."""
    bounds = limits or Limits(max_depth=max_depth)
    return _Schema(query=Query, mutation=Mutation, subscription=Subscription,
                   extensions=[lambda: BoundedDocument(bounds)])
