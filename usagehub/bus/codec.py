"""RawMessage <-> bus bytes, and the two facts routing needs: its partition and its identity.

Routing is cheap on purpose: the ingest node matches the topic (cached), takes the
device the message speaks for from the topic, the adapter's metadata or the
profile's ``device_id`` field of the payload's first record, and asks a
:class:`Router` for the device's partition key (its account). Only a message whose
key depends on its event time (a device that moved account) or that the caller
wants a decoder's verdict for (``full``) is decoded through its profile here.
Everything else is decoded — and quarantined if it must be — by the worker.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import cbor2

from usagehub.core.decode import CompiledProfile, ProfileSet
from usagehub.core.events import RawMessage, UsageEvent
from usagehub.core.paths import MISSING
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
    """A stable partition for ``key`` (CRC-32, the same in every process and release).

    Kept over a uniform hash (BLAKE2b) after measuring both on the bench fleets: CRC-32 is
    linear, so sequential ids (``a0``, ``a1``, …) fall on distinct partitions more evenly than
    a random hash's binomial scatter (``bench/scale.py --spread-only``, docs/scale-out.md).
    """
    return zlib.crc32(key.encode()) % partitions


def event_identity(events: list[UsageEvent]) -> str:
    """The identity of a set of events (device, meter, time, event id), order-free."""
    keys = sorted(_SEP.join((e.device_id.encode(), e.meter.encode(), e.ts.astimezone(UTC).isoformat().encode(),
                             e.event_id.encode())) for e in events)
    return hashlib.blake2b(b"\x1e".join(keys), digest_size=20).hexdigest()


def message_identity(message: RawMessage, compiled: CompiledProfile | None = None) -> str:
    """The message's ``Nats-Msg-Id``: a hash of everything its decoding depends on, so a resend repeats it.

    That is its transport, topic, metadata (the adapter's device and profile) and bytes — not its
    source address, which changes between a device's resends, so a resend on a new connection is
    still dropped by the stream. When the profile takes neither time nor sequence number from the
    payload (``compiled`` has no ``timestamp`` nor ``event_id``), its events' identities depend on
    the receive time, and so does this: two equal payloads received apart are two messages.
    """
    h = hashlib.blake2b(digest_size=20)
    parts = [message.transport.encode(), message.topic.encode()]
    for key in sorted(message.meta):
        parts += [key.encode(), message.meta[key].encode()]
    if compiled is not None and compiled.ts_path is None and compiled.event_id is None:
        micros = (message.received_at - _EPOCH) // timedelta(microseconds=1)
        parts.append(micros.to_bytes(8, "big", signed=True))
    parts.append(message.payload)
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return "m-" + h.hexdigest()


def bytes_identity(message: RawMessage) -> str:
    """The identity of a message no profile claims: the same hash as ``message_identity`` without a profile."""
    return message_identity(message)


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """Where one message goes on the bus and under which identity."""

    partition: int
    msg_id: str
    events: int                 # usage events it carries (0: not decoded here, or undecodable)
    device_id: str | None
    reason: str | None = None   # why it did not decode (the worker quarantines it)
    decoded: bool = True        # False: routed without decoding; the worker decides what it holds
    key: str = ""               # the partition key (an account, a device, or the topic of an unroutable one)


class Router(Protocol):
    """What a message's partition key is: the account of its device (or the device itself)."""

    def device_key(self, device_id: str) -> str | None:
        """The key of every message of ``device_id``, or None when it depends on the event's time."""
        ...

    def key_of(self, event: UsageEvent) -> str:
        """The key of a decoded event."""
        ...


class DeviceRouter:
    """Partition by device (when the ingest node knows no bindings)."""

    def device_key(self, device_id: str) -> str | None:
        """``device:<id>``."""
        return "device:" + device_id

    def key_of(self, event: UsageEvent) -> str:
        """``device:<id>`` of the event's device."""
        return "device:" + event.device_id


BY_DEVICE = DeviceRouter()


def route(message: RawMessage, profiles: ProfileSet, partitions: int, router: Router = BY_DEVICE, *,
          full: bool = False) -> Route:
    """The partition and identity of ``message``, decoding only when the key needs the event time (or ``full``).

    A message no profile claims, or that does not decode, is still published (partitioned
    by topic, or by its device when known) so the worker quarantines it with its bytes:
    nothing is dropped at the ingest node.
    """
    try:
        compiled, captures = profiles.match(message)
    except DecodeError as err:
        return Route(partition=partition_of(message.topic, partitions), msg_id=message_identity(message),
                     events=0, device_id=None, reason=err.reason, key=message.topic)
    msg_id = message_identity(message, compiled)
    device = None if full else _device_of(message, compiled, captures)
    if device is not None:
        key = router.device_key(device)
        if key is not None:
            return Route(partition=partition_of(key, partitions), msg_id=msg_id, events=0, device_id=device,
                         decoded=False, key=key)
    try:
        events = profiles.decode(message)
    except DecodeError as err:
        key = (router.device_key(device) if device is not None else None) or message.topic
        return Route(partition=partition_of(key, partitions), msg_id=msg_id, events=0, device_id=device,
                     reason=err.reason, key=key)
    key = router.key_of(events[0])
    return Route(partition=partition_of(key, partitions), msg_id=msg_id, events=len(events),
                 device_id=events[0].device_id, key=key)


def _device_of(message: RawMessage, compiled: CompiledProfile, captures: dict[str, str]) -> str | None:
    """The device of the message's first reading, without decoding readings; None when that is not cheap."""
    if compiled.device_id is None:
        return captures.get("device_id") or message.meta.get("device_id") or None
    # The profile names devices in the payload (a gateway's): parse it and read the first record's field.
    try:
        record = document = compiled.decode_fn(message.payload)
        if compiled.records is not None:
            records = compiled.records.get(document)
            if not isinstance(records, Sequence) or isinstance(records, str | bytes) or not records:
                return None
            record = records[0]
        found = compiled.device_id.get(record)
    except Exception:  # hostile bytes: decoded in full by the caller, which names the reason
        return None
    if found is MISSING or found is None or found == "":
        return None
    return str(found)
