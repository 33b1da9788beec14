"""RawMessage <-> bus bytes, and the two facts routing needs: its partition and its identity."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import cbor2

from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage, UsageEvent
from usagehub.errors import DecodeError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SEP = b"\x1f"
FORMAT = 1  # first item of every encoded message: lets a later format coexist on one stream


def encode(message: RawMessage) -> bytes:
    """The bus payload of ``message`` (CBOR; received_at kept to the microsecond, in UTC)."""
    micros = (message.received_at - _EPOCH) // timedelta(microseconds=1)
    return cbor2.dumps([FORMAT, message.transport, message.topic, message.source, message.payload, micros,
                        dict(message.meta)])


def decode(data: bytes) -> RawMessage:
    """The RawMessage in bus ``data``; raise ValueError when it is not one we wrote."""
    try:
        item = cbor2.loads(data)
    except Exception as err:  # cbor2 raises several types on hostile bytes
        raise ValueError(f"not a bus message: {err}") from err
    if not (isinstance(item, list) and len(item) == 7 and item[0] == FORMAT):
        raise ValueError("not a bus message: unknown layout")
    _, transport, topic, source, payload, micros, meta = item
    if not (isinstance(payload, bytes) and isinstance(micros, int) and isinstance(meta, dict)):
        raise ValueError("not a bus message: bad field types")
    return RawMessage(transport=str(transport), topic=str(topic), source=str(source), payload=payload,
                      received_at=_EPOCH + timedelta(microseconds=micros),
                      meta={str(k): str(v) for k, v in meta.items()})


def partition_of(key: str, partitions: int) -> int:
    """A stable partition for ``key`` (CRC-32, the same in every process and release)."""
    return zlib.crc32(key.encode()) % partitions


def event_identity(events: list[UsageEvent]) -> str:
    """The message's identity from its events' identities (device, meter, time, event id), order-free."""
    keys = sorted(_SEP.join((e.device_id.encode(), e.meter.encode(), e.ts.astimezone(UTC).isoformat().encode(),
                             e.event_id.encode())) for e in events)
    return hashlib.blake2b(b"\x1e".join(keys), digest_size=20).hexdigest()


def bytes_identity(message: RawMessage) -> str:
    """The identity of an undecodable message: its transport, topic, source and bytes (a resend repeats them)."""
    h = hashlib.blake2b(digest_size=20)
    for part in (message.transport.encode(), message.topic.encode(), message.source.encode(), message.payload):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return "raw-" + h.hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """Where one message goes on the bus and under which identity."""

    partition: int
    msg_id: str
    events: int                 # usage events it carries (0: undecodable here)
    device_id: str | None
    reason: str | None = None   # why it did not decode (the worker quarantines it)


KeyOf = Callable[[UsageEvent], str]


def device_key(event: UsageEvent) -> str:
    """Partition by device (when the ingest node knows no bindings)."""
    return "device:" + event.device_id


def route(message: RawMessage, profiles: ProfileSet, partitions: int, key_of: KeyOf = device_key) -> Route:
    """Decode just enough to route: the partition key (``key_of`` the first event) and the message identity.

    An undecodable message is still published (partitioned by topic) so the worker
    quarantines it with its bytes: nothing is dropped at the ingest node.
    """
    try:
        events = profiles.decode(message)
    except DecodeError as err:
        return Route(partition=partition_of(message.topic, partitions), msg_id=bytes_identity(message), events=0,
                     device_id=None, reason=err.reason)
    if not events:
        return Route(partition=partition_of(message.topic, partitions), msg_id=bytes_identity(message), events=0,
                     device_id=None)
    return Route(partition=partition_of(key_of(events[0]), partitions), msg_id=event_identity(events),
                 events=len(events), device_id=events[0].device_id)
