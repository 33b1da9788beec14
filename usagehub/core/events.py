"""The value types that flow through the pipeline: RawMessage in, UsageEvent out."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType

import msgspec

from usagehub.core.records import Record

_EMPTY: Mapping[str, str] = MappingProxyType({})


class MeterKind(StrEnum):
    """How a meter's values turn into usage (DESIGN "Meter kinds")."""

    DELTA = "delta"            # usage since the last report
    CUMULATIVE = "cumulative"  # a register: usage is the difference between readings
    GAUGE = "gauge"            # an instant value
    EVENT = "event"            # one activity per event
    STATE = "state"            # activation/deactivation that opens/closes sessions


class Aggregation(StrEnum):
    """How a meter's usage is rolled up over a bucket or a session."""

    SUM = "sum"
    COUNT = "count"
    MIN = "min"
    MAX = "max"
    LAST = "last"
    AVG = "avg"
    UNIQUE_COUNT = "unique_count"
    DURATION = "duration"      # time spent in the active state


class RawMessage(Record, frozen=True, kw_only=True):
    """Bytes and metadata as an adapter received them; adapters produce nothing else.

    ``topic`` is the MQTT topic, CoAP/HTTP path, SNMP OID prefix or file name;
    ``source`` the peer address; ``meta`` transport facts (qos, content-format,
    authenticated device id, file offset) that profiles may use.
    """

    transport: str
    topic: str
    payload: bytes
    received_at: datetime
    source: str = ""
    meta: Mapping[str, str] = msgspec.field(default_factory=lambda: _EMPTY)


class UsageEvent(Record, frozen=True, kw_only=True):
    """One meter reading of one device at one device time: the unit of usage.

    Identity is ``(device_id, event_id, meter, ts)``: ``event_id`` is the device's
    message id or sequence number, else a content hash (see :func:`content_event_id`).
    The timestamp is part of the stored key because devices restart their
    sequence counters after a reboot; a redelivery always carries the same time.
    """

    device_id: str
    event_id: str
    meter: str
    ts: datetime
    value: Decimal
    unit: str
    kind: MeterKind
    profile_id: str
    service: str
    received_at: datetime
    reset_marker: str | None = None
    text_value: str | None = None   # state names, user ids for unique counts


def content_event_id(device_id: str, meter: str, ts: datetime, value: object) -> str:
    """Identity of an event whose device sends no message id: a hash of what it says."""
    digest = hashlib.blake2b(
        f"{device_id}\x1f{meter}\x1f{ts.isoformat()}\x1f{value}".encode(), digest_size=12
    )
    return "h:" + digest.hexdigest()
