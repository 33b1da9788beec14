"""The shipped OMS profiles turn (encrypted) telegrams into cumulative meters, with keys from a key ring."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tests.core.codecs.binary_records import load_profile
from tests.core.codecs.wmbus_vectors import mode5_telegram
from usagehub.core.codecs.keyring import KeyRing
from usagehub.core.decode import ProfileSet
from usagehub.core.events import MeterKind, RawMessage
from usagehub.errors import DecodeError

KEY = bytes(range(16))
NOW = datetime(2026, 10, 6, tzinfo=UTC)
NAMES = ("oms-meter-mqtt", "oms-meter-tcp", "oms-meter-file")


def _message(profile: str, payload: bytes) -> RawMessage:
    return RawMessage(transport="x", topic="wmbus/gw1/telegram", payload=payload, received_at=NOW,
                      meta={"profile": profile})


@pytest.mark.parametrize("name", NAMES)
def test_profile_decodes_an_encrypted_telegram(name: str) -> None:
    ring = KeyRing()
    ring.put("wmbus", "12345678", KEY)
    profiles = ProfileSet([load_profile(n) for n in NAMES], ring)
    telegram = mode5_telegram(KEY, "12345678", litres=1_234_567, when=(2026, 10, 5, 12, 30))
    payload = telegram if name == "oms-meter-tcp" else telegram.hex().upper().encode()
    (event,) = profiles.decode(_message(name, payload))
    assert (event.device_id, event.meter, event.value, event.unit) == ("12345678", "volume", Decimal("1234.567"), "m3")
    assert event.kind is MeterKind.CUMULATIVE and event.ts == datetime(2026, 10, 5, 12, 30, tzinfo=UTC)


def test_without_the_key_the_telegram_is_refused_and_a_new_key_is_seen() -> None:
    ring = KeyRing()
    profiles = ProfileSet([load_profile("oms-meter-tcp")], ring)
    telegram = mode5_telegram(KEY, "12345678", litres=5, when=(2026, 10, 5, 12, 30))
    with pytest.raises(DecodeError, match="no key"):
        profiles.decode(_message("oms-meter-tcp", telegram))
    ring.replace({("wmbus", "12345678"): bytes(16)})
    with pytest.raises(DecodeError, match="decryption failed"):
        profiles.decode(_message("oms-meter-tcp", telegram))
    ring.replace({("wmbus", "12345678"): KEY})
    assert profiles.decode(_message("oms-meter-tcp", telegram))[0].value == Decimal("0.005")
