"""The bus codec: lossless round trip, stable partitions, routing without decoding, stable identity, hostile bytes."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from nats.aio.msg import Msg

from usagehub.bus.codec import bytes_identity, decode, encode, message_identity, partition_of, route
from usagehub.bus.consumer import _deliveries, owned_partitions
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage, UsageEvent
from usagehub.runtime.config import SHIPPED_PROFILES
from usagehub.runtime.profile_files import load_profiles

AT = datetime(2026, 11, 27, 17, 5, 3, 123456, tzinfo=UTC)


@pytest.fixture(scope="module")
def profiles() -> ProfileSet:
    return ProfileSet(load_profiles(SHIPPED_PROFILES))


def reading(device: str, seq: int, *, received: datetime = AT, **extra: object) -> RawMessage:
    body = {"seq": seq, "ts": "2026-10-01T00:15:00+00:00", "energy_wh": 1234, "boot": 1, **extra}
    return RawMessage(transport="mqtt", topic=f"meters/{device}/reading", payload=orjson.dumps(body),
                      received_at=received, source="10.0.0.7:5123", meta={"qos": "1"})


def test_round_trip_keeps_every_field_to_the_microsecond() -> None:
    message = reading("m1", 1)
    assert decode(encode(message)) == message


@pytest.mark.parametrize("data", [b"", b"\xff\xfe", b"\x83\x01\x02\x03", encode(reading("m1", 1))[:-3]])
def test_foreign_bytes_are_refused_not_crashed_on(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a bus message"):
        decode(data)


def test_partition_is_stable_and_spread() -> None:
    # CRC-32 of the key: the same in every process (Python's hash() is salted per process).
    assert partition_of("m000", 16) == 13  # crc32(b"m000") = 0x35fc130d
    spread = {partition_of(f"m{i:03d}", 16) for i in range(200)}
    assert spread == set(range(16))


class Moved:
    """A router that knows one device moved between accounts (its key needs the event's time)."""

    def device_key(self, device_id: str) -> str | None:
        return None if device_id == "moved" else f"account:of-{device_id}"

    def key_of(self, event: UsageEvent) -> str:
        return self.device_key(event.device_id) or f"account:at-{event.ts.date()}"


def test_route_without_decoding_by_the_devices_account(profiles: ProfileSet) -> None:
    r = route(reading("m7", 5), profiles, 16, Moved())
    assert not r.decoded and r.events == 0 and r.reason is None and r.device_id == "m7"
    assert r.key == "account:of-m7" and r.partition == partition_of("account:of-m7", 16)
    # A device that moved account is decoded: its key is the account holding it at the event's time.
    moved = route(reading("moved", 5), profiles, 16, Moved())
    assert moved.decoded and moved.events == 1 and moved.key == "account:at-2026-10-01"
    # Asked for a verdict (doors that answer with it), a message is decoded and counted.
    full = route(reading("m7", 5), profiles, 16, Moved(), full=True)
    assert full.decoded and full.events == 1 and full.key == "account:of-m7" and full.msg_id == r.msg_id


def test_identity_is_stable_for_resends_and_distinct_otherwise(profiles: ProfileSet) -> None:
    first = reading("m7", 5)
    resent = RawMessage(transport="mqtt", topic=first.topic, payload=first.payload, source="10.0.0.9:40000",
                        received_at=datetime(2026, 11, 28, tzinfo=UTC), meta=dict(first.meta))
    a, b = route(first, profiles, 16), route(resent, profiles, 16)
    assert a.msg_id == b.msg_id  # received later, from another connection: the same message
    assert a.msg_id == route(first, profiles, 16, full=True).msg_id  # decoded or not: one identity
    assert route(reading("m7", 6), profiles, 16).msg_id != a.msg_id
    assert route(reading("m8", 5), profiles, 16).msg_id != a.msg_id
    # The adapter's metadata (the device an HTTP token names) is part of what is decoded: part of the id.
    other = RawMessage(transport="mqtt", topic=first.topic, payload=first.payload, received_at=AT,
                       meta={"qos": "1", "device_id": "m9"})
    assert route(other, profiles, 16).msg_id != a.msg_id


def test_identity_holds_the_receive_time_when_the_payload_has_no_time() -> None:
    # An M-Bus frame carries no time: its readings are stamped on receipt, so two equal frames received
    # apart are two readings and must not be dropped by the stream's duplicate window as one.
    profiles = ProfileSet(load_profiles(SHIPPED_PROFILES))
    compiled = profiles.by_id["mbus-heat-meter"]
    frame = RawMessage(transport="binary", topic="mbus-heat-meter", payload=b"\x68frame", received_at=AT,
                       meta={"profile": "mbus-heat-meter"})
    later = RawMessage(transport="binary", topic="mbus-heat-meter", payload=b"\x68frame", meta=dict(frame.meta),
                       received_at=datetime(2026, 11, 27, 17, 20, tzinfo=UTC))
    assert message_identity(frame, compiled) != message_identity(later, compiled)
    assert message_identity(frame, compiled) == message_identity(frame, compiled)
    timed = profiles.by_id["acme-em340"]  # the time is in the payload: receive time is not part of it
    assert message_identity(frame, timed) == message_identity(later, timed)


def test_undecodable_is_still_routed(profiles: ProfileSet) -> None:
    bad = RawMessage(transport="mqtt", topic="meters/m7/reading", payload=b"{nope", received_at=AT)
    r = route(bad, profiles, 16, Moved())  # its device is in the topic: routed to its account, undecoded
    assert not r.decoded and r.reason is None and r.key == "account:of-m7"
    full = route(bad, profiles, 16, Moved(), full=True)  # a verdict asked for: the decoder's reason
    assert full.reason and full.events == 0 and full.msg_id == r.msg_id
    assert full.partition == partition_of("meters/m7/reading", 16)
    other = RawMessage(transport="mqtt", topic="meters/m7/reading", payload=b"{nope!", received_at=AT)
    assert bytes_identity(other) != r.msg_id
    unknown = route(RawMessage(transport="mqtt", topic="nowhere/x", payload=b"1", received_at=AT), profiles, 16)
    assert unknown.reason == "unknown topic" and unknown.key == "nowhere/x"


HOSTILE = [b"", b"\xff\xfe\x00", b"{", b"[]", b"null", b'{"readings": 5}', b'{"readings": []}',
           b'{"readings": [{"meter": null}]}', b'{"readings": [{"meter": ""}]}', b"[" * 5000 + b"]" * 5000,
           b'{"readings": [' + b"[" * 3000 + b"]" * 3000 + b"]}", b'{"readings": [{"meter": {"a": 1}}]}']


@pytest.mark.parametrize("payload", HOSTILE)
def test_hostile_bytes_of_a_gateway_never_crash_routing(profiles: ProfileSet, payload: bytes) -> None:
    # The gateway profile names devices in the payload: the ingest node parses it for the first record's
    # device; whatever the bytes, a route comes out (by the device when one is named, else by topic).
    message = RawMessage(transport="mqtt", topic="gateways/gw1/batch", payload=payload, received_at=AT)
    r = route(message, profiles, 16, Moved())
    assert 0 <= r.partition < 16 and r.msg_id.startswith("m-")
    assert r.reason is not None or r.device_id is not None


def test_gateway_routed_by_its_first_readings_device(profiles: ProfileSet) -> None:
    body = {"readings": [{"meter": "m3", "seq": 1, "ts": "2026-10-01T00:15:00+00:00", "energy_wh": 5},
                         {"meter": "m4", "seq": 1, "ts": "2026-10-01T00:15:00+00:00", "energy_wh": 6}]}
    message = RawMessage(transport="mqtt", topic="gateways/gw1/batch", payload=orjson.dumps(body), received_at=AT)
    r = route(message, profiles, 16, Moved())
    assert not r.decoded and r.device_id == "m3" and r.key == "account:of-m3"


def test_owned_partitions_cover_each_partition_once() -> None:
    owned = [owned_partitions(16, i, 3) for i in range(3)]
    assert sorted(p for o in owned for p in o) == list(range(16))
    with pytest.raises(ValueError):
        owned_partitions(16, 3, 3)


@pytest.mark.parametrize("reply", ["$JS.ACK.S.part-0001.3.41.40.1764300000000000000.0",
                                   "$JS.ACK._.ACCHASH.S.part-0001.3.41.40.1764300000000000000.0.tok"])
def test_deliveries_read_from_the_reply_subject_as_nats_py_reads_them(reply: str) -> None:
    msg = Msg(_client=None, subject="usagehub.ingest.1", reply=reply)  # type: ignore[arg-type]
    assert _deliveries(msg) == msg.metadata.num_delivered == 3
