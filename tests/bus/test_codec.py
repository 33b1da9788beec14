"""The bus codec: lossless round trip, stable partitions, identity from the events, nothing dropped at ingest."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from usagehub.bus.codec import bytes_identity, decode, encode, partition_of, route
from usagehub.bus.consumer import owned_partitions
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage
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
    # CRC-32 of the device id: the same in every process (Python's hash() is salted per process).
    assert partition_of("m000", 16) == 13  # crc32(b"m000") = 0x35fc130d
    spread = {partition_of(f"m{i:03d}", 16) for i in range(200)}
    assert spread == set(range(16))


def test_route_by_device_and_identity_from_events(profiles: ProfileSet) -> None:
    first, resent = reading("m7", 5), reading("m7", 5, received=datetime(2026, 11, 28, tzinfo=UTC))
    a, b = route(first, profiles, 16), route(resent, profiles, 16)
    assert a.partition == partition_of("device:m7", 16) and a.device_id == "m7" and a.events == 1
    assert a.msg_id == b.msg_id  # a redelivery received later is the same message
    assert route(reading("m7", 6), profiles, 16).msg_id != a.msg_id
    assert route(reading("m8", 5), profiles, 16).msg_id != a.msg_id


def test_undecodable_is_still_routed_with_its_reason(profiles: ProfileSet) -> None:
    bad = RawMessage(transport="mqtt", topic="meters/m7/reading", payload=b"{nope", received_at=AT)
    r = route(bad, profiles, 16)
    assert r.reason and r.events == 0 and r.device_id is None
    assert r.msg_id == bytes_identity(bad) and r.partition == partition_of("meters/m7/reading", 16)
    other = RawMessage(transport="mqtt", topic="meters/m7/reading", payload=b"{nope!", received_at=AT)
    assert bytes_identity(other) != r.msg_id


def test_owned_partitions_cover_each_partition_once() -> None:
    owned = [owned_partitions(16, i, 3) for i in range(3)]
    assert sorted(p for o in owned for p in o) == list(range(16))
    with pytest.raises(ValueError):
        owned_partitions(16, 3, 3)
