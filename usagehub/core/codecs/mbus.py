"""Codec ``mbus``: wired M-Bus long frames (EN 13757-2/-3) to a document of records.

``68 L L 68 C A CI <user data> CS 16``: the frame is verified (lengths, start,
stop, control code, checksum), then the CI field selects the fixed data
structure (0x73/0x77), the variable one (0x72/0x76) or an application error
(0x70, reported as a DecodeError with the meter's own reason).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from usagehub.core.codecs import DecodeFn
from usagehub.core.codecs.mbus_records import UNKNOWN_UNIT, bcd_le, parse_records
from usagehub.core.codecs.mbus_tables import APPLICATION_ERRORS, FIXED_MEDIUM, FIXED_UNIT, medium_name
from usagehub.errors import DecodeError

_RSP_UD = frozenset({0x08, 0x18, 0x28, 0x38})
_SND_UD = frozenset({0x53, 0x73})
_VARIABLE, _FIXED, _ERROR = frozenset({0x72, 0x76}), frozenset({0x73, 0x77}), 0x70


class MbusOptions(BaseModel):
    """The ``decode:`` block of an ``mbus`` profile."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["mbus"]
    framing: dict[str, Any] | None = None


def manufacturer(code: int) -> str:
    """The three-letter FLAG manufacturer id packed in 15 bits."""
    return "".join(chr(((code >> shift) & 0x1F) + 64) for shift in (10, 5, 0))


def verify_frame(frame: bytes) -> tuple[int, int, int, bytes]:
    """Check a long frame and return (control, address, CI, user data)."""
    if len(frame) < 9 or frame[0] != 0x68 or frame[3] != 0x68:
        raise DecodeError("not an M-Bus long frame", detail=frame[:4].hex())
    length = frame[1]
    if length != frame[2] or length < 3:
        raise DecodeError("invalid M-Bus frame length", detail=f"L={frame[1]}/{frame[2]}")
    if len(frame) != length + 6:
        raise DecodeError("M-Bus frame length mismatch", detail=f"L={length}, got {len(frame)} bytes")
    if frame[-1] != 0x16:
        raise DecodeError("no M-Bus frame stop")
    control, address, ci = frame[4], frame[5], frame[6]
    if control not in _RSP_UD and control not in _SND_UD:
        raise DecodeError("unknown M-Bus control code", detail=f"0x{control:02X}")
    if sum(frame[4:-2]) & 0xFF != frame[-2]:
        raise DecodeError("bad checksum", detail=f"0x{frame[-2]:02X} != 0x{sum(frame[4:-2]) & 0xFF:02X}")
    if control in _SND_UD:
        raise DecodeError("wrong direction in frame (master to slave)")
    return control, address, ci, frame[7:-2]


def _variable(data: bytes, big_endian: bool) -> dict[str, Any]:
    if len(data) < 12:
        raise DecodeError("variable header too short", detail=f"{len(data)} bytes")
    ident = data[0:4][::-1] if big_endian else data[0:4]
    man = int.from_bytes(data[4:6], "big" if big_endian else "little")
    # libmbus prints the BCD id as hex digits, so a meter with hex digits in its id keeps them.
    return {
        "id": f"{int.from_bytes(ident, 'little'):X}",
        "manufacturer": manufacturer(man),
        "version": data[6],
        "medium": medium_name(data[7]),
        "medium_code": data[7],
        "access_number": data[8],
        "status": data[9],
        # two bytes sent low byte first, printed as libmbus prints them (example_data_01: 27 B6 -> "B627")
        "signature": f"{int.from_bytes(data[10:12], 'little'):04X}",
        "structure": "variable",
        **with_current(parse_records(data, 12)),
    }


def with_current(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Records, plus ``current``: the first present, instantaneous, tariff-0 value of each quantity.

    Profiles read registers as ``$.current.energy`` or ``$.current.volume``
    instead of depending on the record order of one firmware version.
    """
    current: dict[str, Any] = {}
    for rec in records:
        if rec["storage"] or rec["tariff"] or rec["subunit"] or rec["function"] != "Instantaneous value":
            continue
        if rec["unit"] == UNKNOWN_UNIT:  # never a register unless a profile maps the record itself
            continue
        value = rec["value"]
        if isinstance(value, Decimal) and rec["quantity"]:
            key = "_".join(rec["quantity"].lower().replace("(", " ").replace(")", " ").split())
            current.setdefault(key, value)
    return {"records": records, "current": current}


def _fixed_counter(status: int, kind: int, raw: bytes) -> dict[str, Any]:
    raw_value = bcd_le(raw) if status & 0x80 == 0 else int.from_bytes(raw, "little", signed=True)
    raw_unit, unit, quantity, factor = FIXED_UNIT[kind & 0x3F]
    return {
        "function": "Stored value" if status & 0x40 else "Actual value",
        "storage": 0 if not status & 0x40 else 1,
        "tariff": None,
        "subunit": None,
        "unit": unit,
        "quantity": quantity,
        "value": (raw_value * factor).normalize() if factor != 1 else raw_value,
        "raw_unit": raw_unit,
        "raw_value": raw_value,
    }


def _fixed(data: bytes) -> dict[str, Any]:
    if len(data) != 16:
        raise DecodeError("invalid length for fixed data", detail=f"{len(data)} bytes")
    status, t1, t2 = data[5], data[6], data[7]
    medium = FIXED_MEDIUM[((t1 & 0xC0) >> 6) | ((t2 & 0xC0) >> 4)]
    records = [_fixed_counter(status, t1, data[8:12]), _fixed_counter(status, t2, data[12:16])]
    return {
        "id": str(bcd_le(data[0:4])),
        "manufacturer": None,
        "medium": medium,
        "access_number": data[4],
        "status": status,
        "structure": "fixed",
        "records": records,
    }


def decode_frame(frame: bytes) -> dict[str, Any]:
    """Decode one complete long frame into slave information and records."""
    _control, address, ci, data = verify_frame(frame)
    if ci == _ERROR:
        code = data[0] if data else 0
        raise DecodeError("M-Bus application error", detail=APPLICATION_ERRORS.get(code, f"0x{code:02X}"))
    if not data:
        raise DecodeError("M-Bus frame without user data")
    if ci in _VARIABLE:
        document = _variable(data, big_endian=ci == 0x76)
    elif ci in _FIXED:
        document = _fixed(data)
    else:
        raise DecodeError("unimplemented CI field", detail=f"0x{ci:02X}")
    document["address"] = address
    return document


class _MbusCodec:
    name = "mbus"
    options_model: type[BaseModel] = MbusOptions

    def compile(self, options: BaseModel) -> DecodeFn:
        """The M-Bus decoder (it takes no options of its own)."""
        return decode_frame


CODEC = _MbusCodec()
