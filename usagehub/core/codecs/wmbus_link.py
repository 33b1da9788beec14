"""Wireless M-Bus (EN 13757-4) data link layer: frame formats A and B, their block CRCs, the DLL header.

A radio telegram is ``L C M(2) A(6) CI …``. Gateways hand it over with or
without the per-block CRCs; :func:`strip_dll_crcs` recognises which by checking
every CRC, so a telegram is never "trimmed" on a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

from usagehub.core.codecs.checksums import checksum_fn
from usagehub.errors import DecodeError

crc_en13757 = checksum_fn("crc16/en13757")
_A_FIRST, _A_BLOCK, _B_SECOND = 10, 16, 126


def manufacturer_code(raw: bytes) -> str:
    """The three-letter FLAG id packed little-endian in two bytes."""
    code = int.from_bytes(raw, "little")
    return "".join(chr(((code >> shift) & 0x1F) + 64) for shift in (10, 5, 0))


def bcd_id(raw: bytes) -> str:
    """A 4-byte little-endian BCD address as its 8 digits (hex digits kept, as meters print them)."""
    return f"{int.from_bytes(raw, 'little'):08X}"


def _crc_ok(block: bytes, crc: bytes) -> bool:
    return crc_en13757(block) == int.from_bytes(crc, "big")


def _strip_a(raw: bytes) -> bytes | None:
    """Format A: a 10-byte first block then 16-byte blocks, each followed by its CRC."""
    length = raw[0]
    body = length + 1 - _A_FIRST
    expected = _A_FIRST + 2 + body + 2 * ((body + _A_BLOCK - 1) // _A_BLOCK)
    if len(raw) != expected:
        return None
    out, pos, size = bytearray(), 0, _A_FIRST
    while pos < len(raw):
        block, crc = raw[pos : pos + size], raw[pos + size : pos + size + 2]
        if not _crc_ok(block, crc):
            return None
        out += block
        pos += size + 2
        size = min(_A_BLOCK, len(raw) - pos - 2)
    return bytes(out)


def _strip_b(raw: bytes) -> bytes | None:
    """Format B: L counts the CRCs; one CRC over bytes 0-125, another over the rest (if any)."""
    if len(raw) != raw[0] + 1 or len(raw) < 12:
        return None
    if len(raw) <= _B_SECOND + 2:
        head, crc = raw[:-2], raw[-2:]
        if not _crc_ok(head, crc):
            return None
        out = bytearray(head)
    else:
        head, crc1 = raw[:_B_SECOND], raw[_B_SECOND : _B_SECOND + 2]
        tail, crc2 = raw[_B_SECOND + 2 : -2], raw[-2:]
        if not (_crc_ok(head, crc1) and _crc_ok(tail, crc2)):
            return None
        out = bytearray(head + tail)
    out[0] = len(out) - 1
    return bytes(out)


def strip_dll_crcs(raw: bytes, frame_format: str = "auto") -> tuple[bytes, str]:
    """The telegram without DLL CRCs and the format found: ``A``, ``B`` or ``none`` (already stripped)."""
    if len(raw) < 11 or raw[0] < 10:
        raise DecodeError("wM-Bus telegram too short", detail=f"{len(raw)} bytes, L={raw[0] if raw else None}")
    if frame_format in ("auto", "A") and (stripped := _strip_a(raw)) is not None:
        return stripped, "A"
    if frame_format in ("auto", "B") and (stripped := _strip_b(raw)) is not None:
        return stripped, "B"
    if len(raw) == raw[0] + 1:
        return raw, "none"
    if frame_format == "auto" and len(raw) > raw[0] + 1:
        # gateways append RSSI/LQI or padding after the telegram: keep what L announces
        return raw[: raw[0] + 1], "none"
    raise DecodeError("wM-Bus length mismatch", detail=f"L={raw[0]}, got {len(raw)} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkHeader:
    """The DLL header: control field, manufacturer, address (id, version, device type)."""

    control: int
    manufacturer: str
    manufacturer_raw: bytes
    id: str
    id_raw: bytes
    version: int
    device_type: int

    @property
    def address(self) -> bytes:
        """M(2) + A(6), the first half of the mode 5 and ELL initialisation vectors."""
        return self.manufacturer_raw + self.id_raw + bytes([self.version, self.device_type])


def link_header(telegram: bytes) -> LinkHeader:
    """Parse ``L C M A`` of a CRC-free telegram."""
    return LinkHeader(
        control=telegram[1],
        manufacturer=manufacturer_code(telegram[2:4]),
        manufacturer_raw=telegram[2:4],
        id=bcd_id(telegram[4:8]),
        id_raw=telegram[4:8],
        version=telegram[8],
        device_type=telegram[9],
    )
