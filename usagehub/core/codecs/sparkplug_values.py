"""Sparkplug B metric values: the typed ``*_value`` fields and the packed arrays of ``bytes_value``.

Numbers come out exact: integers as int (Int8-Int64 re-signed from their
unsigned wire form), Float as the shortest decimal that round-trips through
float32, Double through its shortest repr; never a float.
"""

from __future__ import annotations

import struct
from decimal import Decimal
from typing import Any

from usagehub.errors import DecodeError

DATATYPES = ("Unknown", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float",
             "Double", "Boolean", "String", "DateTime", "Text", "UUID", "DataSet", "Bytes", "File", "Template",
             "PropertySet", "PropertySetList", "Int8Array", "Int16Array", "Int32Array", "Int64Array", "UInt8Array",
             "UInt16Array", "UInt32Array", "UInt64Array", "FloatArray", "DoubleArray", "BooleanArray",
             "StringArray", "DateTimeArray")
_SIGNED_BITS = {1: 8, 2: 16, 3: 32, 4: 64}
_ARRAYS = {22: "b", 23: "h", 24: "i", 25: "q", 26: "B", 27: "H", 28: "I", 29: "Q", 30: "f", 31: "d", 34: "q"}
MAX_ARRAY = 65536


def datatype_name(code: int) -> str:
    """The DataType enum name, or ``Unknown(n)``."""
    return DATATYPES[code] if 0 <= code < len(DATATYPES) else f"Unknown({code})"


def float32_decimal(value: float) -> Decimal | str:
    """The shortest decimal that a float32 reading rounds back to (1.23 stays 1.23)."""
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    packed = struct.pack("<f", value)
    for digits in range(6, 10):
        text = f"{value:.{digits}g}"
        if struct.pack("<f", float(text)) == packed:
            return Decimal(text)
    return Decimal(repr(value))  # pragma: no cover - 9 digits always round-trip


def double_decimal(value: float) -> Decimal | str:
    """A double as its shortest repr, exact from then on."""
    return Decimal(repr(value)) if value == value and abs(value) != float("inf") else str(value)


def _resign(value: int, code: int) -> int:
    bits = _SIGNED_BITS.get(code)
    if bits is None:
        return value
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def scalar(code: int, kind: str | None, raw: Any) -> Any:
    """The value of a metric whose oneof field ``kind`` holds ``raw``, by its datatype ``code``."""
    if kind is None:
        return None
    if kind in ("int_value", "long_value"):
        return _resign(int(raw), code)
    if kind == "float_value":
        return float32_decimal(raw)
    if kind == "double_value":
        return double_decimal(raw)
    if kind in ("boolean_value", "string_value"):
        return raw
    if kind == "bytes_value":
        return array(code, bytes(raw)) if code in _ARRAYS or code in (32, 33) else bytes(raw).hex().upper()
    return None  # DataSet, Template, extensions: not a reading


def array(code: int, data: bytes) -> list[Any]:
    """A packed little-endian array (Sparkplug 3.0 section 6.4.17), by datatype."""
    if code == 32:
        return _booleans(data)
    if code == 33:
        if data and data[-1] != 0:
            raise DecodeError("StringArray not null-terminated")
        return [part.decode("utf-8", "replace") for part in data[:-1].split(b"\x00")] if data else []
    fmt = _ARRAYS[code]
    size = struct.calcsize(fmt)
    if len(data) % size or len(data) // size > MAX_ARRAY:
        raise DecodeError("bad array length", detail=f"{datatype_name(code)}: {len(data)} bytes")
    values = list(struct.unpack(f"<{len(data) // size}{fmt}", data))
    if fmt == "f":
        return [float32_decimal(v) for v in values]
    if fmt == "d":
        return [double_decimal(v) for v in values]
    return values


def _booleans(data: bytes) -> list[bool]:
    if len(data) < 4:
        raise DecodeError("BooleanArray without its count")
    count = int.from_bytes(data[:4], "little")
    if count > 8 * (len(data) - 4):
        raise DecodeError("BooleanArray count beyond its bytes", detail=str(count))
    bits = data[4:]
    return [bool(bits[i // 8] >> (7 - i % 8) & 1) for i in range(count)]
