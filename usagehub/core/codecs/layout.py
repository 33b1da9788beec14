"""Codec ``binary``: a declarative record layout compiled once into a construct Struct.

A profile describes its record as a list of fields (integers of any width and
byte order, BCD, bit fields, fixed and length-prefixed strings, arrays, enums,
constants) and optionally a checksum. The body is compiled with construct's
``compile()``; the checksum is verified by hand afterwards because construct's
``Checksum``/``RawCopy`` gain nothing from compilation (STACK.md).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Literal

import construct as cs
from pydantic import BaseModel, ConfigDict, Field, model_validator

from usagehub.core.codecs import DecodeFn
from usagehub.core.codecs.checksums import ALGORITHMS, checksum_fn
from usagehub.errors import DecodeError

Order = Literal["big", "little"]
_INT_RE = r"^[ui](8|16|24|32|40|48|56|64)$"
_NUMERIC = ("f32", "f64")


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BitField(_M):
    """One named run of bits inside a ``bits`` field, most significant first."""

    name: str
    bits: int = Field(ge=1, le=64)


class LayoutField(_M):
    """One field of a record layout; ``type`` decides which other keys apply."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    type: str = Field(
        description="u8..u64, i8..i64 (any multiple of 8), f32, f64, bcd, bits, bytes, "
        "string, pstring, array, enum, const"
    )
    order: Order | None = None
    size: int | None = Field(None, ge=1, le=4096)
    length_bytes: Literal[1, 2, 4] = 1
    encoding: str = "ascii"
    count: int | None = Field(None, ge=1, le=4096)
    of: str | None = None
    base: str = "u8"
    values: dict[int, str] = {}
    value: int | str | None = None
    fields: list[BitField] = []

    @model_validator(mode="after")
    def _coherent(self) -> LayoutField:
        kind = self.type
        if kind in ("bcd", "bytes", "string") and self.size is None:
            raise ValueError(f"field {self.name!r} of type {kind} needs 'size' (bytes)")
        if kind == "array" and (self.count is None or self.of is None):
            raise ValueError(f"array field {self.name!r} needs 'count' and 'of'")
        if kind == "bits" and (not self.fields or sum(f.bits for f in self.fields) % 8):
            raise ValueError(f"bits field {self.name!r} needs 'fields' whose bits add up to whole bytes")
        if kind == "enum" and not self.values:
            raise ValueError(f"enum field {self.name!r} needs 'values'")
        if kind == "const" and self.value is None:
            raise ValueError(f"const field {self.name!r} needs 'value'")
        if kind not in ("bcd", "bits", "bytes", "string", "pstring", "array", "enum", "const"):
            _int_or_float(kind, "big")  # raises ValueError on an unknown type
        return self


class ChecksumSpec(_M):
    """A checksum held by the layout's last field, computed over ``payload[start:field]``."""

    algorithm: str
    field: str
    start: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _known(self) -> ChecksumSpec:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown checksum {self.algorithm!r}; known: {', '.join(ALGORITHMS)}")
        return self


class LayoutOptions(_M):
    """The ``decode:`` block of a ``binary`` profile."""

    type: Literal["binary"]
    byte_order: Order = "big"
    layout: list[LayoutField] = Field(min_length=1)
    checksum: ChecksumSpec | None = None
    framing: dict[str, Any] | None = Field(None, description="read by the binary adapter, not the codec")

    @model_validator(mode="after")
    def _checksum_last(self) -> LayoutOptions:
        names = [f.name for f in self.layout]
        if len(set(names)) != len(names):
            raise ValueError("layout field names must be unique")
        if self.checksum is not None:
            last = self.layout[-1]
            if last.name != self.checksum.field or not last.type.startswith("u"):
                raise ValueError("the checksum field must be the layout's last field, an unsigned integer")
        return self


def _int_or_float(kind: str, order: Order) -> cs.Construct:
    if kind == "f32":
        return cs.Float32b if order == "big" else cs.Float32l
    if kind == "f64":
        return cs.Float64b if order == "big" else cs.Float64l
    if not re.match(_INT_RE, kind):
        raise ValueError(f"unknown field type {kind!r}")
    width = int(kind[1:]) // 8
    signed = kind[0] == "i"
    if width in (1, 2, 4, 8):
        fmt = {1: "b", 2: "h", 4: "l", 8: "q"}[width]
        return cs.FormatField(">" if order == "big" else "<", fmt if signed else fmt.upper())
    return cs.BytesInteger(width, signed=signed, swapped=order == "little")


def _bcd(raw: bytes) -> int:
    value = 0
    for byte in raw:
        hi, lo = byte >> 4, byte & 0x0F
        if hi > 9 or lo > 9:
            raise DecodeError("bad BCD digit", detail=raw.hex())
        value = value * 100 + hi * 10 + lo
    return value


def _bits_fn(spec: LayoutField) -> Callable[[int], dict[str, int]]:
    total = sum(f.bits for f in spec.fields)
    plan, shift = [], total
    for f in spec.fields:
        shift -= f.bits
        plan.append((f.name, shift, (1 << f.bits) - 1))

    def split(value: int) -> dict[str, int]:
        return {name: (value >> sh) & mask for name, sh, mask in plan if not name.startswith("_")}

    return split


def _field(spec: LayoutField, order: Order) -> tuple[cs.Construct, Callable[[Any], Any] | None]:
    """The construct of one field and the post-conversion applied to its parsed value."""
    kind, fo = spec.type, spec.order or order
    if kind == "bcd":
        size = spec.size or 1
        if fo == "little":
            return cs.Bytes(size), lambda raw: _bcd(raw[::-1])
        return cs.Bytes(size), _bcd
    if kind == "bits":
        width = sum(f.bits for f in spec.fields) // 8
        return cs.BytesInteger(width, swapped=fo == "little"), _bits_fn(spec)
    if kind == "bytes":
        return cs.Bytes(spec.size or 1), bytes.hex
    if kind == "string":
        encoding = spec.encoding
        return cs.Bytes(spec.size or 1), lambda raw: raw.decode(encoding).rstrip("\x00")
    if kind == "pstring":
        return cs.PascalString(_int_or_float(f"u{spec.length_bytes * 8}", fo), spec.encoding), None
    if kind == "array":
        elem, conv = _field(LayoutField(name="item", type=spec.of or "u8", order=fo, size=spec.size), order)
        if conv is None:
            return cs.Array(spec.count or 1, elem), _plain_list
        return cs.Array(spec.count or 1, elem), lambda items: [conv(i) for i in items]
    if kind == "enum":
        table = dict(spec.values)
        return _int_or_float(spec.base, fo), lambda v: table.get(v, v)
    if kind == "const":
        # checked here rather than by cs.Const, which construct's compiler does not inline
        expected = _const_bytes(spec, fo)
        return cs.Bytes(len(expected)), _const_check(spec.name, expected)
    sub = _int_or_float(kind, fo)
    return sub, (_to_decimal if kind in _NUMERIC else None)


def _plain_list(items: Any) -> list[Any]:
    return [(_to_decimal(i) if isinstance(i, float) else i) for i in items]


def _to_decimal(value: float) -> Decimal | None:
    if value != value or value in (float("inf"), float("-inf")):
        return None  # NaN/inf: the device says "no value"; a meter reading it is skipped
    return Decimal(repr(value))


def _const_check(name: str, expected: bytes) -> Callable[[bytes], None]:
    def check(raw: bytes) -> None:
        if raw != expected:
            raise DecodeError("layout mismatch", detail=f"{name} is {raw.hex()}, expected {expected.hex()}")

    return check


def _const_bytes(spec: LayoutField, order: Order) -> bytes:
    value = spec.value
    if isinstance(value, str):
        return bytes.fromhex(value)
    size = spec.size or max(1, ((value or 0).bit_length() + 7) // 8)
    return int(value or 0).to_bytes(size, order)


class _Compiled:
    """A compiled layout: construct parse, then per-field conversions and the checksum check."""

    def __init__(self, options: LayoutOptions) -> None:
        subcons: list[cs.Construct] = []
        self._plan: list[tuple[str, Callable[[Any], Any] | None]] = []
        self._consts: list[tuple[str, Callable[[Any], Any]]] = []
        for spec in options.layout:
            sub, conv = _field(spec, options.byte_order)
            subcons.append(spec.name / sub)
            if spec.type == "const" and conv is not None:
                self._consts.append((spec.name, conv))
            elif not spec.name.startswith("_"):
                self._plan.append((spec.name, conv))
        struct = cs.Struct(*subcons)
        try:
            self._size: int | None = struct.sizeof()
        except cs.SizeofError:  # variable length: let construct insist on consuming everything
            self._size = None
            struct = cs.Struct(*subcons, cs.Terminated)
        try:
            self._parse = struct.compile().parse
        except Exception:
            self._parse = struct.parse
        self._check = None
        if options.checksum is not None:
            self._check = (
                checksum_fn(options.checksum.algorithm),
                options.checksum.start,
                int(options.layout[-1].type[1:]) // 8,
                options.checksum.field,
            )

    def __call__(self, payload: bytes) -> dict[str, Any]:
        if self._size is not None and len(payload) != self._size:
            raise DecodeError("wrong record length", detail=f"{len(payload)} bytes, layout has {self._size}")
        try:
            parsed = self._parse(payload)
        # compiled parsers raise struct.error for short input where interpreted ones raise StreamError
        except (
            cs.ConstructError,
            struct.error,
            UnicodeDecodeError,
            ValueError,
            OverflowError,
            IndexError,
        ) as err:
            raise DecodeError("layout mismatch", detail=str(err)[:200]) from err
        if self._check is not None:
            fn, start, size, name = self._check
            expected = fn(payload[start : len(payload) - size])
            if parsed[name] != expected:
                raise DecodeError("bad checksum", detail=f"{name}={parsed[name]:#x}, computed {expected:#x}")
        for name, check in self._consts:
            check(parsed[name])
        out: dict[str, Any] = {}
        try:
            for name, conv in self._plan:
                value = parsed[name]
                out[name] = conv(value) if conv is not None else value
        except UnicodeDecodeError as err:  # a text field holding bytes its encoding refuses
            raise DecodeError("layout mismatch", detail=f"{name}: {err}"[:200]) from err
        return out


class _LayoutCodec:
    name = "binary"
    options_model: type[BaseModel] = LayoutOptions

    def compile(self, options: BaseModel) -> DecodeFn:
        """A decoder for one profile's layout."""
        assert isinstance(options, LayoutOptions)
        return _Compiled(options)


CODEC = _LayoutCodec()
