"""The ``binary`` codec: declarative layouts compiled to construct, checksums verified by hand."""

from __future__ import annotations

import struct
from decimal import Decimal
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.core.codecs.binary_records import load_profile, pulse_record
from usagehub.core.codecs.layout import CODEC, LayoutOptions
from usagehub.errors import DecodeError


def _codec(layout: list[dict[str, Any]], **extra: Any) -> Any:
    return CODEC.compile(LayoutOptions.model_validate({"type": "binary", "layout": layout, **extra}))


def test_profile_record_decodes_every_field_type() -> None:
    decode = CODEC.compile(LayoutOptions.model_validate(load_profile("acme-pulse-bin").decode))
    doc = decode(pulse_record(status=2))
    assert doc == {
        "device": 7,
        "seq": 1,
        "ts": 1_700_000_000,
        "energy_wh": 123_456,
        "water_l": 42,
        "voltage_dv": 2301,
        "temp_dc": -15,
        "flags": {"tamper": 1, "low_battery": 0},
        "status": "fault",
        "serial": "SN000001",
        "fw": 0x0102,
        "crc": doc["crc"],
    }


def test_bad_checksum_is_a_decode_error() -> None:
    decode = CODEC.compile(LayoutOptions.model_validate(load_profile("acme-pulse-bin").decode))
    record = bytearray(pulse_record())
    record[10] ^= 0x01
    with pytest.raises(DecodeError, match="bad checksum"):
        decode(bytes(record))


@pytest.mark.parametrize(
    "payload", [b"", b"\xa5\x5a", pulse_record()[:-1], pulse_record() + b"\x00", b"\x00" + pulse_record()[1:]]
)
def test_wrong_length_or_constant_is_a_decode_error(payload: bytes) -> None:
    decode = CODEC.compile(LayoutOptions.model_validate(load_profile("acme-pulse-bin").decode))
    with pytest.raises(DecodeError):
        decode(payload)


def test_little_endian_odd_widths_bcd_pstring_array_float() -> None:
    decode = _codec(
        [
            {"name": "a", "type": "u24"},
            {"name": "b", "type": "i24", "order": "little"},
            {"name": "meter_no", "type": "bcd", "size": 3},
            {"name": "le_bcd", "type": "bcd", "size": 2, "order": "little"},
            {"name": "label", "type": "pstring", "length_bytes": 1},
            {"name": "s", "type": "array", "count": 2, "of": "u16", "order": "little"},
            {"name": "f", "type": "f32"},
            {"name": "raw", "type": "bytes", "size": 2},
            {"name": "_skip", "type": "u8"},
        ],
        byte_order="big",
    )
    payload = (
        b"\x01\x02\x03"
        + (-2).to_bytes(3, "little", signed=True)
        + b"\x12\x34\x56"
        + b"\x78\x56"
        + b"\x02hi"
        + b"\x01\x00\x02\x00"
        + struct.pack(">f", 1.5)
        + b"\xbe\xef"
        + b"\x00"
    )
    assert decode(payload) == {
        "a": 0x010203,
        "b": -2,
        "meter_no": 123456,
        "le_bcd": 5678,
        "label": "hi",
        "s": [1, 2],
        "f": Decimal("1.5"),
        "raw": "beef",
    }


def test_bad_bcd_digit() -> None:
    decode = _codec([{"name": "n", "type": "bcd", "size": 2}])
    with pytest.raises(DecodeError, match="BCD"):
        decode(b"\x1a\x00")


@pytest.mark.parametrize(
    "layout",
    [
        [{"name": "x", "type": "u12"}],
        [{"name": "x", "type": "bcd"}],
        [{"name": "x", "type": "array", "of": "u8"}],
        [{"name": "x", "type": "bits", "fields": [{"name": "a", "bits": 3}]}],
        [{"name": "x", "type": "enum"}],
        [{"name": "x", "type": "u8"}, {"name": "x", "type": "u8"}],
    ],
)
def test_bad_layouts_are_refused_at_load(layout: list[dict[str, Any]]) -> None:
    with pytest.raises(ValidationError):
        LayoutOptions.model_validate({"type": "binary", "layout": layout})


def test_checksum_must_be_the_last_field() -> None:
    with pytest.raises(ValidationError):
        LayoutOptions.model_validate(
            {
                "type": "binary",
                "layout": [{"name": "c", "type": "u16"}, {"name": "x", "type": "u8"}],
                "checksum": {"algorithm": "crc16/arc", "field": "c"},
            }
        )


@settings(max_examples=200, deadline=None)
@given(
    values=st.tuples(st.integers(0, 2**32 - 1), st.integers(-(2**15), 2**15 - 1), st.integers(0, 2**24 - 1)),
    little=st.booleans(),
)
def test_integers_roundtrip(values: tuple[int, int, int], little: bool) -> None:
    order: Literal["little", "big"] = "little" if little else "big"
    decode = _codec(
        [
            {"name": "a", "type": "u32"},
            {"name": "b", "type": "i16"},
            {"name": "c", "type": "u24"},
            {"name": "crc", "type": "u8"},
        ],
        byte_order=order,
        checksum={"algorithm": "xor8", "field": "crc"},
    )
    body = (
        values[0].to_bytes(4, order)
        + values[1].to_bytes(2, order, signed=True)
        + values[2].to_bytes(3, order)
    )
    crc = 0
    for byte in body:
        crc ^= byte
    assert decode(body + bytes([crc])) == {"a": values[0], "b": values[1], "c": values[2], "crc": crc}


def test_undecodable_text_is_a_decode_error() -> None:
    decode = _codec([{"name": "s", "type": "string", "size": 2}, {"name": "p", "type": "pstring"}])
    with pytest.raises(DecodeError):
        decode(b"\xff\xfe\x00")
    with pytest.raises(DecodeError):
        decode(b"ok\x01\xff")
    assert decode(b"o\x00\x01k") == {"s": "o", "p": "k"}
