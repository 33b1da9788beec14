"""The dlms_poll codec: exact scaling, units, and refusal of anything that is not the adapter's document."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from usagehub.core.codecs.dlms_poll import decode_dlms_poll, encode_payload, normalize_obis, scaled
from usagehub.errors import DecodeError


def test_document_applies_scalers_exactly_and_names_units() -> None:
    document = decode_dlms_poll(encode_payload({
        "kind": "registers", "ts": "2026-11-27T10:00:00+00:00", "clock": "2026-11-27T10:00:00+00:00",
        "objects": {"1.0.1.8.0.255": [1234567, -3, 30], "1.0.1.7.0.255": [25, 2, 27],
                    "0.0.96.1.0.255": ["SN-1", None, None], "1.0.32.7.0.255": [2301, -1, 35]}}))
    assert document["1.0.1.8.0.255"] == Decimal("1234.567")
    assert document["1.0.1.7.0.255"] == Decimal("2500")
    assert document["0.0.96.1.0.255"] == "SN-1"
    assert document["units"] == {"1.0.1.8.0.255": "Wh", "1.0.1.7.0.255": "W", "1.0.32.7.0.255": "V"}
    assert document["kind"] == "registers" and document["ts"] == "2026-11-27T10:00:00+00:00"


@given(st.integers(min_value=-(2**63), max_value=2**64 - 1), st.integers(min_value=-128, max_value=127))
def test_scaling_is_exact(raw: int, scaler: int) -> None:
    assert scaled(raw, scaler) == Decimal(raw) * Decimal(10) ** scaler


@pytest.mark.parametrize("payload", [
    b"not json", b"[]", b'{"v": 2, "kind": "registers", "ts": "x", "objects": {}}',
    b'{"v": 1, "kind": "push", "ts": "x", "objects": {}}',
    b'{"v": 1, "kind": "registers", "objects": {}}',
    b'{"v": 1, "kind": "registers", "ts": "x", "objects": {"1.8.0": [1, 0, 30]}}',
    b'{"v": 1, "kind": "registers", "ts": "x", "objects": {"1.0.1.8.0.255": [1, 0]}}',
    b'{"v": 1, "kind": "registers", "ts": "x", "objects": {"1.0.1.8.0.255": [1, 1000, 30]}}',
    b'{"v": 1, "kind": "registers", "ts": "x", "objects": {"1.0.1.8.0.255": [1, 0, "Wh"]}}',
    b'{"v": 1, "kind": "registers", "ts": "x", "objects": {"1.0.1.8.0.255": [[1], 0, 30]}}',
])
def test_anything_else_is_a_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_dlms_poll(payload)


def test_obis_forms() -> None:
    assert normalize_obis("1-0:1.8.0*255") == "1.0.1.8.0.255" == normalize_obis(" 1.0.1.8.0.255 ")
    for bad in ("1.0.1.8.0", "1.0.1.8.0.256", "1-0:1.8.0", "a.b.c.d.e.f"):
        with pytest.raises(ValueError):
            normalize_obis(bad)
