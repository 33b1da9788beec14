"""M-Bus (EN 13757-3) variable data records: DIB/VIB parsing and value decoding.

Values are exact: integers and BCD are scaled with Decimal; only the 32-bit
real type goes through its shortest decimal repr. Dates are ISO strings.
"""

from __future__ import annotations

import struct
from decimal import Decimal
from typing import Any

from usagehub.core.codecs.mbus_tables import FUNCTIONS, VIF
from usagehub.errors import DecodeError

MAX_EXTENSIONS = 10
MAX_CUSTOM_VIF = 128
_DATA_LEN = (0, 1, 2, 3, 4, 4, 6, 8, 0, 1, 2, 3, 4, 0, 6, 8)


def _int_le(raw: bytes) -> int:
    return int.from_bytes(raw, "little", signed=True) if raw else 0


def bcd_le(raw: bytes) -> int:
    """A little-endian BCD number as libmbus reads it.

    A high nibble F in the most significant byte means negative; other high
    nibbles above 9 count as 0 and low nibbles are added as they are, which is
    what meters reporting "value during error state" rely on in libmbus vectors.
    """
    value = 0
    for byte in reversed(raw):
        hi, lo = byte >> 4, byte & 0x0F
        value = (value * 10 + (hi if hi < 10 else 0)) * 10 + lo
    return -value if raw and raw[-1] >> 4 == 0xF else value


def _date(raw: bytes) -> str:
    """Type G (CP16) date as libmbus prints it (no validity bit in type G)."""
    day, month = raw[0] & 0x1F, raw[1] & 0x0F
    year = ((raw[0] & 0xE0) >> 5) | ((raw[1] & 0xF0) >> 1)
    year += 2000 if year <= 80 else 1900
    return f"{year:04d}-{month:02d}-{day:02d}"


def _datetime(raw: bytes, second: int = 0) -> str:
    """Type F (CP32) or, with ``second``, type I (CP48) date and time.

    An invalid time (bit 7 of the minute byte) prints as libmbus's zero date.
    """
    if raw[0] & 0x80:
        return "1900-01-00T00:00:00Z"
    minute, hour, day, month = raw[0] & 0x3F, raw[1] & 0x1F, raw[2] & 0x1F, raw[3] & 0x0F
    year = ((raw[2] & 0xE0) >> 5) | ((raw[3] & 0xF0) >> 1)
    year += 2000 if year <= 80 else 1900
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}Z"


def _hex(raw: bytes) -> str:
    return " ".join(f"{b:02X}" for b in raw)


class _Cursor:
    """A read position over the record area that raises DecodeError past the end."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def byte(self, where: str) -> int:
        if self.pos >= len(self.data):
            raise DecodeError("premature end of record", detail=f"at {where}, offset {self.pos}")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def take(self, count: int, where: str) -> bytes:
        if self.pos + count > len(self.data):
            raise DecodeError("premature end of record", detail=f"at {where}, offset {self.pos}")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def chain(self, first: int, where: str) -> list[int]:
        """Extension bytes following ``first`` while bit 7 is set (DIFE or VIFE)."""
        out: list[int] = []
        more = first & 0x80
        while more:
            if len(out) >= MAX_EXTENSIONS:
                raise DecodeError(f"too many {where}s", detail=f"more than {MAX_EXTENSIONS}")
            ext = self.byte(where)
            out.append(ext)
            more = ext & 0x80
        return out


def _dib_fields(dif: int, difes: list[int]) -> tuple[int, int | None, int | None]:
    storage, tariff, device = (dif & 0x40) >> 6, 0, 0
    for i, dife in enumerate(difes):
        storage |= (dife & 0x0F) << (1 + 4 * i)
        tariff |= ((dife & 0x30) >> 4) << (2 * i)
        device |= ((dife & 0x40) >> 6) << i
    return (storage, tariff, device) if difes else (storage, None, None)


def _variable_length(cur: _Cursor) -> tuple[int, str]:
    """LVAR byte: 0x00-0xBF text, 0xC0-0xDF BCD (+/-), 0xE0-0xEF binary, 0xF0-0xFA big binary."""
    lvar = cur.byte("LVAR")
    if lvar <= 0xBF:
        return lvar, "text"
    if lvar <= 0xCF:
        return lvar - 0xC0, "bcd+"
    if lvar <= 0xDF:
        return lvar - 0xD0, "bcd-"
    if lvar <= 0xEF:
        return lvar - 0xE0, "binary"
    if lvar <= 0xFA:
        return 4 * (lvar - 0xEC), "binary"
    raise DecodeError("unsupported LVAR", detail=f"0x{lvar:02X}")


def _raw_value(coding: int, raw: bytes, vif: int, vife0: int | None, kind: str) -> Any:
    """The decoded, unscaled value of one record: int, Decimal, or str."""
    plain = vif & 0x7F
    if coding == 0x00:
        return ""
    if coding == 0x02 and plain == 0x6C:
        return _date(raw)
    if coding == 0x06 and plain == 0x6D:
        return _datetime(raw[1:], second=raw[0] & 0x3F)
    if coding == 0x04 and (
        plain == 0x6D or (vif == 0xFD and vife0 is not None and vife0 & 0x7F in (0x30, 0x70))
    ):
        return _datetime(raw)
    if coding in (0x01, 0x02, 0x03, 0x04, 0x06, 0x07):
        return _int_le(raw)
    if coding == 0x05:
        value = struct.unpack("<f", raw)[0]
        return Decimal(repr(value)) if value == value and abs(value) != float("inf") else str(value)
    if coding in (0x09, 0x0A, 0x0B, 0x0C, 0x0E):
        return bcd_le(raw)
    if coding == 0x0D:
        if kind == "text":
            return raw[::-1].decode("latin-1")
        if kind.startswith("bcd"):
            return -bcd_le(raw) if kind == "bcd-" else bcd_le(raw)
        return _hex(raw[::-1])  # binary LVAR: most significant byte first, as libmbus prints it
    if coding == 0x0F:
        return _hex(raw)
    raise DecodeError("unsupported data field", detail=f"DIF coding 0x{coding:X} (selection for readout)")


# Combinable (orthogonal) VIFE codes EN 13757-3 leaves reserved, and 0x7C whose extension table we lack.
_RESERVED_COMBINABLE = frozenset({0x44, 0x45, 0x4C, 0x4D, 0x7C})
UNKNOWN_UNIT = "unknown"


class UnknownVib(Exception):
    """A VIF or VIFE without a table entry: the record is kept raw (internal to this module)."""


def _unit(vif: int, vifes: list[int], custom: str | None) -> tuple[str, str, Decimal, Decimal]:
    """Unit, quantity, multiplier and additive offset of a VIB; UnknownVib if a code has no entry."""
    if vif in (0xFD, 0xFB):
        if not vifes:
            raise DecodeError("missing VIF extension", detail=f"VIF 0x{vif:02X}")
        code = (vifes[0] & 0x7F) | (0x100 if vif == 0xFD else 0x200)
        combinable = vifes[1:]
    else:
        code = vif & 0x7F
        combinable = vifes
    if code == 0x7C:
        unit, quantity, factor = "-", custom or "", Decimal(1)
    elif code in VIF:
        unit, quantity, factor = VIF[code]
    else:
        raise UnknownVib(f"VIF=0x{code:02X}" if code < 0x100 else f"VIF=0x{vif:02X} VIFE=0x{code & 0x7F:02X}")
    if code != 0x7F and vif != 0xFF:  # after a manufacturer-specific VIF the VIFEs are the manufacturer's
        for ext in combinable:
            if ext & 0x7F in _RESERVED_COMBINABLE:
                raise UnknownVib(f"VIFE=0x{ext & 0x7F:02X}")
    offset = Decimal(0)
    if vif & 0x80 and vif not in (0xFD, 0xFB) and vifes:
        ext = vifes[0] & 0x7F
        if 0x70 <= ext <= 0x77:
            factor *= Decimal(1).scaleb((ext & 0x07) - 6)
        elif 0x78 <= ext <= 0x7B:
            offset = Decimal(1).scaleb((ext & 0x03) - 3)
        elif ext == 0x7D:
            factor *= 1000
    return unit, quantity, factor, offset


def _scaled(value: Any, factor: Decimal, offset: Decimal) -> Any:
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return (value * factor + offset).normalize() if factor != 1 or offset else Decimal(value)
    return value


def _manufacturer_record(dif: int, cur: _Cursor) -> dict[str, Any]:
    rest = cur.data[cur.pos :]
    cur.pos = len(cur.data)
    return {
        "function": "More records follow" if dif == 0x1F else "Manufacturer specific",
        "storage": 0,
        "tariff": None,
        "subunit": None,
        "unit": "",
        "quantity": "",
        "value": _hex(rest),
        "dif": dif,
        "vif": None,
    }


def parse_record(cur: _Cursor) -> dict[str, Any]:
    """The next data record at ``cur`` as a document (value, unit, quantity, storage …)."""
    dif = cur.byte("DIF")
    if dif in (0x0F, 0x1F):
        return _manufacturer_record(dif, cur)
    difes = cur.chain(dif, "DIFE")
    vif = cur.byte("VIF")
    custom = None
    if vif & 0x7F == 0x7C:
        size = cur.byte("VIF length")
        if size > MAX_CUSTOM_VIF:
            raise DecodeError("too long variable length VIF", detail=str(size))
        custom = cur.take(size, "variable length VIF")[::-1].decode("latin-1")
    vifes = cur.chain(vif, "VIFE")
    coding, kind = dif & 0x0F, ""
    length = _DATA_LEN[coding]
    if coding == 0x0D:
        length, kind = _variable_length(cur)
    raw = cur.take(length, "data")
    storage, tariff, device = _dib_fields(dif, difes)
    record: dict[str, Any] = {
        "function": FUNCTIONS[(dif & 0x30) >> 4],
        "storage": storage,
        "tariff": tariff,
        "subunit": device,
        "dif": dif,
        "vif": vif,
        "vife": vifes or None,
    }
    try:
        unit, quantity, factor, offset = _unit(vif, vifes, custom)
    except UnknownVib as unknown:
        # Kept as libmbus keeps an "Unknown VIF": the raw value, no unit, no quantity; the frame goes on.
        return record | _unknown(coding, raw, kind, str(unknown))
    value = _raw_value(coding, raw, vif, vifes[0] if vifes else None, kind)
    return record | {"unit": unit, "quantity": quantity, "value": _scaled(value, factor, offset)}


def _unknown(coding: int, raw: bytes, kind: str, reason: str) -> dict[str, Any]:
    """The document of a record whose VIB has no table entry: raw value, unit "unknown"."""
    value: Any
    if coding in (0x01, 0x02, 0x03, 0x04, 0x06, 0x07):
        value = _int_le(raw)
    elif coding in (0x09, 0x0A, 0x0B, 0x0C, 0x0E):
        value = bcd_le(raw)
    else:
        value = _hex(raw)
    return {"unit": UNKNOWN_UNIT, "quantity": f"Unknown ({reason})", "value": value, "raw": raw.hex().upper()}


def parse_records(data: bytes, start: int) -> list[dict[str, Any]]:
    """Every data record from ``start`` to the end of the user data; 0x2F fillers are skipped."""
    cur, records = _Cursor(data, start), []
    while cur.pos < len(data):
        if data[cur.pos] == 0x2F:
            cur.pos += 1
            continue
        records.append(parse_record(cur))
    return records
