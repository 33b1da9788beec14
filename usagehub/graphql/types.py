"""GraphQL object types: registry, events, usage, quarantine."""

from __future__ import annotations

import base64
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import strawberry

from usagehub.storage.registry import AccountRow, BindingRow, DeviceRow


@strawberry.enum
class Bucket(Enum):
    """Time bucket of a usage series."""

    HOUR = "HOUR"
    DAY = "DAY"
    MONTH = "MONTH"


@strawberry.enum
class Role(Enum):
    """API key roles."""

    ADMIN = "admin"
    BILLING = "billing"
    ANALYTICS = "analytics"
    OPERATOR = "operator"


@strawberry.type
class Account:
    """A household or company that holds devices and is billed."""

    id: str
    name: str
    market: str
    currency: str
    timezone: str
    prepaid: bool
    created_at: datetime

    @classmethod
    def of(cls, row: AccountRow) -> Account:
        """From a registry row."""
        return cls(id=row.account_id, name=row.name, market=row.market, currency=row.currency,
                   timezone=row.timezone, prepaid=row.prepaid, created_at=row.created_at)


@strawberry.type
class Device:
    """A registered device."""

    id: str
    profile_id: str | None
    name: str
    address: str | None
    port: int | None
    created_at: datetime

    @classmethod
    def of(cls, row: DeviceRow) -> Device:
        """From a registry row."""
        return cls(id=row.device_id, profile_id=row.profile_id, name=row.name, address=row.address,
                   port=row.port, created_at=row.created_at)


@strawberry.type
class Binding:
    """A device held by an account over a validity range [validFrom, validTo)."""

    id: str
    device_id: str
    account_id: str
    valid_from: datetime
    valid_to: datetime | None

    @classmethod
    def of(cls, row: BindingRow) -> Binding:
        """From a registry row."""
        return cls(id=str(row.binding_id), device_id=row.device_id, account_id=row.account_id,
                   valid_from=row.valid_from, valid_to=row.valid_to)


@strawberry.type
class UsageEvent:
    """One stored meter reading."""

    device_id: str
    event_id: str
    meter: str
    ts: datetime
    value: Decimal
    unit: str
    kind: str
    profile_id: str
    service: str
    received_at: datetime = strawberry.field(
        description="When the hub received it, to the whole millisecond (the hub's clock; ts is the device's).")
    text_value: str | None

    @classmethod
    def of(cls, row: dict[str, Any]) -> UsageEvent:
        """From an events row."""
        return cls(device_id=row["device_id"], event_id=row["event_id"], meter=row["meter"], ts=row["ts"],
                   value=row["value"], unit=row["unit"], kind=row["kind"], profile_id=row["profile_id"],
                   service=row["service"], received_at=row["received_at"], text_value=row["text_value"])


@strawberry.type
class UsageBucket:
    """Usage of one meter in one bucket (start in the account's time zone)."""

    start: datetime
    meter: str
    quantity: Decimal
    unit: str


@strawberry.type
class QuarantineItem:
    """A message that could not become events, kept with its raw bytes and the reason."""

    id: str
    received_at: datetime
    transport: str
    topic: str
    source: str
    reason: str
    detail: str | None
    device_id: str | None
    payload_base64: str
    payload_text: str | None
    replayed_at: datetime | None
    replay_outcome: str | None

    @classmethod
    def of(cls, row: dict[str, Any]) -> QuarantineItem:
        """From a quarantine row."""
        raw = bytes(row["payload"])
        try:
            text: str | None = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        return cls(id=str(row["quarantine_id"]), received_at=row["received_at"], transport=row["transport"],
                   topic=row["topic"], source=row["source"], reason=row["reason"], detail=row["detail"],
                   device_id=row["device_id"], payload_base64=base64.b64encode(raw).decode(),
                   payload_text=text, replayed_at=row["replayed_at"], replay_outcome=row["replay_outcome"])


@strawberry.type
class ReasonCount:
    """Open quarantine items with one reason."""

    reason: str
    count: int


INGEST_COUNTERS = ("messages", "accepted", "duplicates", "quarantined", "batches")


@strawberry.type
class IngestStats:
    """What the hubs on this database have ingested, as committed (survives restarts; the hub's own tenant only)."""

    messages: int | None
    accepted: int | None
    duplicates: int | None
    quarantined: int | None
    batches: int | None
    quarantine_open: list[ReasonCount]


@strawberry.type
class ApiKey:
    """A new API key; the secret is shown only here, once."""

    key: str
    key_id: str
    role: str


@strawberry.type
class ReplayResult:
    """What replaying one quarantined message gave."""

    id: str
    outcome: str
    reason: str | None
