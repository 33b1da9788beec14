"""Operations fields: alerts (query, acknowledge, live subscription) and revenue assurance, tenant-scoped."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import strawberry
from strawberry.types import Info

from usagehub.errors import DomainError
from usagehub.graphql.auth import api_error, domain_errors, require
from usagehub.graphql.pagination import Connection, connection, decode_cursor, page_size
from usagehub.operations.profiles import CatalogEntry
from usagehub.storage.alerts import AlertRow
from usagehub.storage.assurance import AssuranceRow
from usagehub.storage.queries import HUB_TENANT

ALERT_READ = ("admin", "operator")
ALERT_WRITE = ("admin", "operator")
ASSURANCE_READ = ("admin", "operator", "billing")
CONSUMER_TOKENS = ("admin", "operator", "billing")
METER_TYPES_READ = ("admin", "operator")
# Meter types are shared by every tenant of a hub, so only admins of the hub's own tenant change them.
METER_TYPES_WRITE = ("admin",)


def _svc(info: Info) -> Any:
    svc = info.context.services.extra.get("operations")
    if svc is None:
        raise api_error("UNAVAILABLE", "operations are not enabled on this hub")
    return svc


def _consumers(info: Info) -> Any:
    svc = info.context.services.extra.get("consumers")
    if svc is None:
        raise api_error("UNAVAILABLE", "consumer self-service is not enabled on this hub")
    return svc


@strawberry.type
class ConsumerToken:
    """A consumer token: give ``token`` to the account holder (it is not shown again)."""

    id: strawberry.ID
    token: str
    account_id: str


@strawberry.type
class Alert:
    """A tamper or fault event, a silent meter, a low balance, a block or a restore."""

    id: strawberry.ID
    kind: str
    severity: str
    account_id: str | None
    device_id: str | None
    message: str
    raised_at: datetime
    acked_at: datetime | None
    acked_by: str | None

    @classmethod
    def of(cls, a: AlertRow) -> Alert:
        """From a stored alert."""
        return cls(id=strawberry.ID(str(a.alert_id)), kind=a.kind, severity=a.severity, account_id=a.account_id,
                   device_id=a.device_id, message=a.message, raised_at=a.raised_at, acked_at=a.acked_at,
                   acked_by=a.acked_by)


@strawberry.type
class AssuranceDay:
    """One account (null: the tenant's unbound devices), local day and product ("" carries the counts)."""

    account_id: str | None
    day: date
    product: str
    events: int
    quarantined: int
    billable: Decimal
    unbound: Decimal
    adjustments: Decimal
    ratio: Decimal | None = strawberry.field(
        description="billable / (billable + unbound) for the product: the share of received usage that bills")

    @classmethod
    def of(cls, r: AssuranceRow) -> AssuranceDay:
        """From a stored row."""
        total = r.billable + r.unbound
        ratio = (r.billable / total).quantize(Decimal("0.0001")) if total else None
        return cls(account_id=r.account_id, day=r.day, product=r.product, events=r.events,
                   quarantined=r.quarantined, billable=r.billable, unbound=r.unbound, adjustments=r.adjustments,
                   ratio=ratio)


def _catalog(info: Info) -> Any:
    catalog = info.context.services.extra.get("profile_catalog")
    if catalog is None:
        raise api_error("UNAVAILABLE", "meter types cannot be edited on this hub")
    return catalog


@strawberry.type
class MeterType:
    """A device profile in force: from a file (version 0) or stored through the API (versions 1, 2, ...)."""

    id: str
    version: int
    source: str
    description: str
    transport: str
    service: str
    meters: list[str]
    yaml: str

    @classmethod
    def of(cls, e: CatalogEntry) -> MeterType:
        """From a catalogue entry."""
        p = e.profile
        return cls(id=p.id, version=e.version, source=e.source, description=p.description,
                   transport=p.match.transport, service=p.service, meters=sorted(p.meters), yaml=e.yaml)


@strawberry.type
class MeterTypeVersion:
    """One stored version of a meter type; ``author`` (an API key id) only for keys of the hub's own tenant."""

    version: int
    author: str | None
    created_at: datetime
    yaml: str


@strawberry.type
class FieldError:
    """One validation error, at a field and line of the YAML."""

    field: str | None
    line: int | None
    message: str


@strawberry.type
class SaveMeterTypeResult:
    """The meter type in force after saving, or why nothing was saved."""

    meter_type: MeterType | None
    errors: list[FieldError]


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None:
        raise api_error("BAD_REQUEST", f"{name} needs a time zone (ISO 8601 with offset)")
    return value


@strawberry.type
class OperationsQuery:
    """Operations reads."""

    @strawberry.field(description="The tenant's alerts, newest first.")
    async def alerts(self, info: Info, first: int = 50, after: str | None = None, open_only: bool = False,
                     kind: str | None = None) -> Connection[Alert]:
        tenant = require(info, *ALERT_READ)
        n = page_size(first)
        cursor = decode_cursor(after)
        with domain_errors():
            rows = await _svc(info).alerts(tenant=tenant, open_only=open_only, kind=kind,
                                           after=int(str(cursor)) if cursor is not None else None,
                                           limit=n + 1)
        return connection([Alert.of(a) for a in rows], n, lambda a: int(a.id))

    @strawberry.field(description="Meter types (device profiles) in force, by id.")
    async def meter_types(self, info: Info) -> list[MeterType]:
        require(info, *METER_TYPES_READ)
        return [MeterType.of(e) for e in _catalog(info).entries()]

    @strawberry.field(description="Stored versions of one meter type, newest first (the file is version 0).")
    async def meter_type_versions(self, info: Info, id: str) -> list[MeterTypeVersion]:
        own = require(info, *METER_TYPES_READ) == HUB_TENANT  # key ids of the hub's admins stay in their tenant
        rows = await _catalog(info).versions(id)
        return [MeterTypeVersion(version=v.version, author=v.author if own else None, created_at=v.created_at,
                                 yaml=v.yaml) for v in rows]

    @strawberry.field(description="Received, billable, quarantined, unbound and adjusted usage per account and day.")
    async def revenue_assurance(self, info: Info, since: datetime, until: datetime,
                                account_id: str | None = None) -> list[AssuranceDay]:
        tenant = require(info, *ASSURANCE_READ)
        with domain_errors():
            rows = await _svc(info).revenue_assurance(tenant=tenant, since=_aware(since, "since"),
                                                      until=_aware(until, "until"), account_id=account_id)
        return [AssuranceDay.of(r) for r in rows]


@strawberry.type
class OperationsMutation:
    """Operations changes."""

    @strawberry.mutation(description="Acknowledge alerts; the author is the API key.")
    async def acknowledge_alerts(self, info: Info, ids: list[strawberry.ID]) -> list[Alert]:
        tenant = require(info, *ALERT_WRITE)
        if not ids or len(ids) > 500:
            raise api_error("BAD_REQUEST", "acknowledge between 1 and 500 alerts at once")
        try:
            numbers = [int(i) for i in ids]
        except ValueError as err:
            raise api_error("NOT_FOUND", "no such alert") from err
        with domain_errors():
            done = await _svc(info).acknowledge(tenant=tenant, ids=numbers, by=info.context.principal.key_id)
        return [Alert.of(a) for a in done]


    @strawberry.mutation(description="Validate and store a new version of a meter type; running hubs apply it.")
    async def save_meter_type(self, info: Info, yaml: str) -> SaveMeterTypeResult:
        if require(info, *METER_TYPES_WRITE) != HUB_TENANT:  # the catalogue is shared by every tenant's devices
            raise api_error("FORBIDDEN", f"meter types are changed by admins of the hub's own tenant {HUB_TENANT!r}")
        with domain_errors():
            entry, errors = await _catalog(info).save(yaml, author=info.context.principal.key_id)
        return SaveMeterTypeResult(meter_type=MeterType.of(entry) if entry else None,
                                   errors=[FieldError(field=e.field, line=e.line, message=e.message) for e in errors])

    @strawberry.mutation(description="A token for the consumer self-service page /me of one account (shown once).")
    async def create_consumer_token(self, info: Info, account_id: str) -> ConsumerToken:
        tenant = require(info, *CONSUMER_TOKENS)
        with domain_errors():
            token, token_id = await _consumers(info).create(tenant=tenant, account_id=account_id,
                                                            created_by=info.context.principal.key_id)
        return ConsumerToken(id=strawberry.ID(token_id), token=token, account_id=account_id)

    @strawberry.mutation(description="Revoke a consumer token; it is refused from the next request on.")
    async def revoke_consumer_token(self, info: Info, id: strawberry.ID) -> bool:
        tenant = require(info, *CONSUMER_TOKENS)
        with domain_errors():
            await _consumers(info).revoke(tenant=tenant, token_id=str(id))
        return True


@strawberry.type
class OperationsSubscription:
    """Alerts as they are raised (graphql-transport-ws)."""

    @strawberry.subscription(description="New alerts of the caller's tenant.")
    async def alerts(self, info: Info) -> AsyncGenerator[Alert, None]:
        tenant = require(info, *ALERT_READ)
        feed = info.context.services.extra.get("alert_feed")
        if feed is None:
            raise DomainError("UNAVAILABLE", "alerts are not enabled on this hub")
        async for a in feed.stream(tenant):
            yield Alert.of(a)


# Strawberry types merged into the root Query, Mutation and Subscription by schema.py.
QUERIES: tuple[type, ...] = (OperationsQuery,)
MUTATIONS: tuple[type, ...] = (OperationsMutation,)
SUBSCRIPTIONS: tuple[type, ...] = (OperationsSubscription,)
