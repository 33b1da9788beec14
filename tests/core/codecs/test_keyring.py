"""Device keys sealed at rest: round trip, bound to tenant/device/protocol, refused under another secret."""

from __future__ import annotations

import pytest

from usagehub.core.codecs.keyring import KeyRing, KeySealer, parse_key_hex
from usagehub.errors import ConfigError

KEY = bytes(range(16))
SECRET = "correct horse battery staple"


def test_seal_round_trip_and_no_clear_key_in_the_blob() -> None:
    sealer = KeySealer(SECRET)
    sealed = sealer.seal(KEY, tenant="t1", device_id="12345678", protocol="wmbus")
    assert KEY not in sealed and len(sealed) == 1 + 12 + 16 + 16
    assert sealer.open(sealed, tenant="t1", device_id="12345678", protocol="wmbus") == KEY
    assert sealer.seal(KEY, tenant="t1", device_id="12345678", protocol="wmbus") != sealed  # fresh nonce


@pytest.mark.parametrize("where", [{"tenant": "t2"}, {"device_id": "87654321"}, {"protocol": "dlms"}])
def test_a_moved_row_does_not_open(where: dict[str, str]) -> None:
    sealer = KeySealer(SECRET)
    sealed = sealer.seal(KEY, tenant="t1", device_id="12345678", protocol="wmbus")
    binding = {"tenant": "t1", "device_id": "12345678", "protocol": "wmbus"} | where
    with pytest.raises(ConfigError, match="does not open"):
        sealer.open(sealed, **binding)


def test_wrong_secret_and_garbage() -> None:
    sealed = KeySealer(SECRET).seal(KEY, tenant="t1", device_id="1", protocol="wmbus")
    with pytest.raises(ConfigError, match="does not open"):
        KeySealer(SECRET + "!").open(sealed, tenant="t1", device_id="1", protocol="wmbus")
    with pytest.raises(ConfigError, match="unknown format"):
        KeySealer(SECRET).open(b"\x02" + sealed[1:], tenant="t1", device_id="1", protocol="wmbus")
    with pytest.raises(ConfigError, match="at least 16"):
        KeySealer("short")


def test_key_hex_and_ring_lookup() -> None:
    assert parse_key_hex("000102030405060708090a0b0c0d0e0f") == KEY
    for bad in ("0001", "zz" * 16, "00" * 17):
        with pytest.raises(ConfigError):
            parse_key_hex(bad)
    ring = KeyRing()
    ring.put("wmbus", "1234abcd", KEY)
    lookup = ring.lookup_for("wmbus")
    assert lookup("1234ABCD") == KEY and lookup("00000000") is None
    assert ring.lookup_for("dlms")("1234ABCD") is None
    ring.replace({})
    assert lookup("1234ABCD") is None  # the codec's lookup sees refreshed keys
