"""DLMS/COSEM push transport (IEC 62056-46/-47): HDLC frames, segmentation, LLC, general block transfer.

A push arrives as one or more HDLC frames ``7E A0/A8 len dst src ctrl HCS info FCS 7E``
(HCS and FCS are CRC-16/X-25, sent low byte first). Segmented frames (format
A8) and general-block-transfer blocks (APDU ``E0``) are joined into one APDU.
"""

from __future__ import annotations

from usagehub.core.codecs.checksums import checksum_fn
from usagehub.errors import DecodeError

_X25 = checksum_fn("crc16/x25")
_LLC = b"\xe6\xe7\x00"
MAX_APDU = 1 << 16


def _address_end(data: bytes, start: int) -> int:
    """Index after an HDLC address (1, 2 or 4 bytes, the last with bit 0 set)."""
    for size in (1, 2, 4):
        if start + size <= len(data) and data[start + size - 1] & 1:
            return start + size
    raise DecodeError("bad HDLC address", detail=f"at offset {start}")


def hdlc_frames(blob: bytes) -> list[tuple[bool, bytes]]:
    """Every frame in ``blob`` as (segmented, information field), checksums verified."""
    frames, pos = [], 0
    while pos < len(blob):
        if blob[pos] != 0x7E:
            raise DecodeError("no HDLC flag", detail=f"offset {pos}")
        if pos + 3 > len(blob):
            raise DecodeError("HDLC frame truncated", detail=f"offset {pos}")
        fmt = blob[pos + 1] << 8 | blob[pos + 2]
        if fmt >> 12 != 0xA:
            raise DecodeError("not an HDLC type 3 frame", detail=f"format 0x{fmt:04X}")
        length = fmt & 0x7FF
        frame = blob[pos + 1 : pos + 1 + length]
        if len(frame) != length or pos + 1 + length >= len(blob) or blob[pos + 1 + length] != 0x7E:
            raise DecodeError("HDLC frame length mismatch", detail=f"offset {pos}, length {length}")
        frames.append((bool(fmt & 0x0800), _information(frame)))
        pos += length + 2
        if pos < len(blob) and blob[pos] == 0x7E and pos + 1 < len(blob) and blob[pos + 1] == 0x7E:
            pos += 1  # two flags between frames
    if not frames:
        raise DecodeError("no HDLC frame")
    return frames


def _information(frame: bytes) -> bytes:
    """The information field of one frame (without flags), after HCS and FCS checks."""
    if _X25(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
        raise DecodeError("HDLC FCS mismatch")
    header_end = _address_end(frame, _address_end(frame, 2)) + 1  # dst, src, control
    if len(frame) == header_end + 2:
        return b""  # a frame without information field has no HCS
    if header_end + 2 > len(frame) - 2 or _X25(frame[:header_end]) != int.from_bytes(
            frame[header_end : header_end + 2], "little"):
        raise DecodeError("HDLC HCS mismatch")
    return frame[header_end + 2 : -2]


def ber_length(data: bytes, pos: int) -> tuple[int, int]:
    """A BER/A-XDR length at ``pos`` and the position after it."""
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    size = first & 0x7F
    if size == 0 or size > 3 or pos + 1 + size > len(data):
        raise DecodeError("bad length field", detail=f"0x{first:02X}")
    return int.from_bytes(data[pos + 1 : pos + 1 + size], "big"), pos + 1 + size


def _gbt_blocks(apdu: bytes) -> tuple[bool, int, bytes]:
    """(last block, block number, data) of one general-block-transfer APDU."""
    if len(apdu) < 7:
        raise DecodeError("general block transfer too short")
    control, number = apdu[1], int.from_bytes(apdu[2:4], "big")
    length, pos = ber_length(apdu, 6)
    data = apdu[pos : pos + length]
    if len(data) != length:
        raise DecodeError("general block transfer truncated", detail=f"block {number}")
    return bool(control & 0x80), number, data


def join_apdu(blob: bytes) -> bytes:
    """The one APDU carried by the HDLC frames in ``blob`` (segments and GBT blocks joined)."""
    parts, current = [], b""
    for segmented, info in hdlc_frames(blob):
        current += info[3:] if not current and info.startswith(_LLC) else info
        if not segmented:
            parts.append(current)
            current = b""
    if current:
        raise DecodeError("HDLC segmentation not finished", detail="last frame has the segmentation bit")
    if len(parts) == 1 and parts[0][:1] != b"\xe0":
        return parts[0]
    apdu, expected = bytearray(), 1
    for index, part in enumerate(parts):
        if part[:1] != b"\xe0":
            raise DecodeError("several APDUs in one push", detail=f"frame {index} is not a GBT block")
        last, number, data = _gbt_blocks(part)
        if number == 1 and expected != 1:
            apdu, expected = bytearray(), 1  # a new push began: the unfinished one cannot be decoded
        if number != expected:
            raise DecodeError("general block transfer out of order", detail=f"block {number}, expected {expected}")
        apdu += data
        expected += 1
        if len(apdu) > MAX_APDU:
            raise DecodeError("APDU too long")
        if last:
            if index != len(parts) - 1:
                raise DecodeError("data after the last GBT block")
            return bytes(apdu)
    raise DecodeError("general block transfer incomplete", detail=f"{len(parts)} blocks, no last block")
