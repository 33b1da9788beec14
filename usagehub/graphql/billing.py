"""GraphQL for sessions and billing: types, drill-down (record -> sessions -> events), runs, corrections."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import strawberry
from strawberry.types import Info

from usagehub.billing.service import BillingService, MeterView
from usagehub.core.billing import BillingRecord as CoreRecord
from usagehub.core.sessions import Session
from usagehub.graphql import types as t
from usagehub.graphql.auth import BILLING_WRITE, api_error, domain_errors, require, require_personal
from usagehub.graphql.pagination import Connection, connection, decode_cursor, page_size

BILLING_READ = ("admin", "operator", "billing")
CORRECTION_WRITE = ("admin", "operator", "billing")


def _service(info: Info) -> BillingService:
    service = info.context.services.billing
    if service is None:
        raise api_error("UNAVAILABLE", "billing is not running in this hub")
    assert isinstance(service, BillingService)
    return service


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise api_error("BAD_REQUEST", f"{name} needs a time zone (ISO 8601 with offset)")
    return value


def _session_after(after: str | None) -> tuple[datetime, str] | None:
    pos = decode_cursor(after)
    if pos is None:
        return None
    if not isinstance(pos, list) or len(pos) != 2:
        raise api_error("BAD_CURSOR", "the cursor is not valid")
    return datetime.fromisoformat(pos[0]), str(pos[1])


@strawberry.type
class ProductValue:
    """One product's aggregated value in a session."""

    product: str
    value: Decimal | None
    samples: int
    seconds: Decimal


@strawberry.type
class BillingSession:
    """A billable session: the merged usage of all devices of one account for one service."""

    id: str
    account_id: str
    service: str
    period: str
    start: datetime
    end: datetime
    closed_reason: str | None
    activity_count: int
    devices: list[str]
    duration_s: Decimal
    aggregates: list[ProductValue]
    expires_at: datetime | None

    @classmethod
    def of(cls, sid: str, s: Session) -> BillingSession:
        """From a stored session."""
        return cls(id=sid, account_id=s.account_id, service=s.service, period=s.period.label, start=s.start,
                   end=s.end, closed_reason=s.closed_reason.value if s.closed_reason else None,
                   activity_count=s.activity_count, devices=sorted(s.devices), duration_s=s.duration_s,
                   aggregates=[ProductValue(product=k, value=p.result(), samples=p.count, seconds=p.seconds)
                               for k, p in sorted(s.partials.items())], expires_at=s.expires_at)

    @strawberry.field(description="The events of the session's devices within its span, in device time.")
    async def events(self, info: Info, first: int = 100, after: str | None = None) -> Connection[t.UsageEvent]:
        """Drill down from a session to its events."""
        tenant = require(info, *BILLING_READ)
        n = page_size(first)
        pos = decode_cursor(after)
        key = (datetime.fromisoformat(pos[0]), pos[1], pos[2], pos[3]) if isinstance(pos, list) else None
        rows = await _service(info).session_events(tenant=tenant, session_id=self.id, after=key, limit=n + 1)
        return connection([t.UsageEvent.of(r) for r in rows], n,
                          lambda e: [e.ts.isoformat(), e.device_id, e.meter, e.event_id])


@strawberry.type
class BillingRecord:
    """One account, period and product's billable quantity; billed records are final."""

    id: str
    account_id: str
    period: str
    period_start: datetime
    period_end: datetime
    product: str
    quantity: Decimal
    unit: str
    status: str
    kind: str
    adjusts: str | None
    version: int

    @classmethod
    def of(cls, r: CoreRecord) -> BillingRecord:
        """From a core record."""
        return cls(id=r.record_id, account_id=r.account_id, period=r.period.label, period_start=r.period.start,
                   period_end=r.period.end, product=r.product, quantity=r.quantity, unit=r.unit,
                   status=r.status.value, kind=r.kind.value, adjusts=r.adjusts, version=r.version)

    @strawberry.field(description="The sessions this record bills (an adjustment: those of the billed record).")
    async def sessions(self, info: Info, first: int = 50, after: str | None = None) -> Connection[BillingSession]:
        """Drill down from a record to its sessions."""
        tenant = require(info, *BILLING_READ)
        n = page_size(first)
        service = _service(info)
        record = await service.record(tenant=tenant, record_id=self.id)
        if record is None:
            return connection([], n, lambda s: None)
        rows = await service.record_sessions(tenant=tenant, record=record, after=_session_after(after),
                                             limit=n + 1)
        return connection([BillingSession.of(sid, s) for sid, s in rows], n,
                          lambda s: [s.start.isoformat(), s.id])


@strawberry.type
class MeterInspection:
    """A device meter at a glance: last reading, current-period total, last event time."""

    device_id: str
    meter: str
    unit: str
    account_id: str | None
    last_value: Decimal
    last_reading_at: datetime
    last_received_at: datetime = strawberry.field(
        description="When the hub received the last reading, to the whole millisecond (the hub's clock).")
    period: str
    period_total: Decimal
    last_state: str | None = strawberry.field(description="A state meter's current state (its last state name).")

    @classmethod
    def of(cls, v: MeterView) -> MeterInspection:
        """From a storage view."""
        return cls(device_id=v.device_id, meter=v.meter, unit=v.unit, account_id=v.account_id,
                   last_value=v.last_value, last_reading_at=v.last_reading_at, last_received_at=v.last_received_at,
                   period=v.period_label, period_total=v.period_total, last_state=v.last_state)


@strawberry.type
class Correction:
    """A correction, stored as a new usage entry with its reason and author."""

    entry_id: str
    device_id: str
    meter: str
    ts: datetime
    quantity: Decimal
    unit: str
    reason: str
    author: str


# --- root fields (added to Query and Mutation in schema.py) ----------------------------------------

async def sessions(info: Info, account_id: str, since: datetime | None = None, until: datetime | None = None,
                   first: int = 50, after: str | None = None) -> Connection[BillingSession]:
    """Sessions of an account starting in [since, until)."""
    tenant = await require_personal(info)
    n = page_size(first)
    rows = await _service(info).sessions(tenant=tenant, account_id=account_id, since=_aware(since, "since"),
                                         until=_aware(until, "until"), after=_session_after(after), limit=n + 1)
    return connection([BillingSession.of(sid, s) for sid, s in rows], n, lambda s: [s.start.isoformat(), s.id])


async def billing_records(info: Info, account_id: str, period: str | None = None, status: str | None = None,
                          first: int = 50, after: str | None = None) -> Connection[BillingRecord]:
    """Billing records of an account, optionally of one period (YYYY-MM) and status."""
    tenant = require(info, *BILLING_READ)
    n = page_size(first)
    pos = decode_cursor(after)
    rows = await _service(info).records(tenant=tenant, account_id=account_id, period=period, status=status,
                                        after=str(pos) if pos is not None else None, limit=n + 1)
    return connection([BillingRecord.of(r) for r in rows], n, lambda r: r.id)


async def billing_record(info: Info, id: str) -> BillingRecord | None:
    """One billing record, to drill down into its sessions and events."""
    tenant = require(info, *BILLING_READ)
    record = await _service(info).record(tenant=tenant, record_id=id)
    return BillingRecord.of(record) if record else None


async def meter_inspection(info: Info, device_id: str | None = None, account_id: str | None = None,
                           search: str | None = None) -> list[MeterInspection]:
    """Meters of one device, of the devices an account holds now, or of devices matching ``search``."""
    tenant = require(info, *BILLING_READ)
    if device_id is None and account_id is None and not search:
        raise api_error("BAD_REQUEST", "give deviceId, accountId or search")
    views = await _service(info).inspect(tenant=tenant, device_id=device_id, account_id=account_id, search=search)
    return [MeterInspection.of(v) for v in views]


async def mark_billed(info: Info, record_ids: list[str]) -> list[BillingRecord]:
    """Bill these records; they become final (later data creates adjustments)."""
    tenant = require(info, *BILLING_WRITE)
    if len(record_ids) > 1000:
        raise api_error("BAD_REQUEST", "bill at most 1000 records at once")
    with domain_errors():
        records = await _service(info).mark_billed(tenant=tenant, record_ids=record_ids,
                                                   author=info.context.principal.key_id)
    return [BillingRecord.of(r) for r in records]


async def run_billing(info: Info, period: str, account_id: str | None = None) -> list[BillingRecord]:
    """A billing run: close period YYYY-MM (of one or every account) and bill its records."""
    tenant = require(info, *BILLING_WRITE)
    with domain_errors():
        records = await _service(info).run(tenant=tenant, period=period, account_id=account_id,
                                           author=info.context.principal.key_id)
    return [BillingRecord.of(r) for r in records]


async def submit_correction(info: Info, device_id: str, meter: str, ts: datetime, quantity: Decimal,
                            reason: str) -> Correction:
    """Add a signed quantity to a meter at ``ts``, with a reason; the author is the API key."""
    tenant = require(info, *CORRECTION_WRITE)
    when = _aware(ts, "ts")
    assert when is not None
    author = str(info.context.principal.key_id)
    with domain_errors():
        entry_id, unit = await _service(info).correct(tenant=tenant, device_id=device_id, meter=meter, ts=when,
                                                      quantity=quantity, reason=reason, author=author)
    return Correction(entry_id=str(entry_id), device_id=device_id, meter=meter, ts=when, quantity=quantity,
                      unit=unit, reason=reason, author=author)
