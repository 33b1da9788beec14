"""Frame checksums by name: CRC-16 variants (via crcmod), 8-bit sum and XOR.

Names follow the CRC catalogue (reveng): ``crc16/arc``, ``crc16/modbus``,
``crc16/xmodem``, ``crc16/ccitt-false`` … ``binascii.crc_hqx`` only covers
XMODEM, so every CRC goes through crcmod's table-driven functions.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce

import crcmod

ChecksumFn = Callable[[bytes], int]

# (polynomial with the x^16 bit, init, reflected, xor-out) per catalogue entry.
_CRC16: dict[str, tuple[int, int, bool, int]] = {
    "crc16/arc": (0x18005, 0x0000, True, 0x0000),
    "crc16/modbus": (0x18005, 0xFFFF, True, 0x0000),
    "crc16/usb": (0x18005, 0xFFFF, True, 0xFFFF),
    "crc16/maxim": (0x18005, 0x0000, True, 0xFFFF),
    "crc16/buypass": (0x18005, 0x0000, False, 0x0000),
    "crc16/xmodem": (0x11021, 0x0000, False, 0x0000),
    "crc16/ccitt-false": (0x11021, 0xFFFF, False, 0x0000),
    "crc16/kermit": (0x11021, 0x0000, True, 0x0000),
    "crc16/x25": (0x11021, 0xFFFF, True, 0xFFFF),
    "crc16/genibus": (0x11021, 0xFFFF, False, 0xFFFF),
    "crc16/dnp": (0x13D65, 0x0000, True, 0xFFFF),
    "crc16/en13757": (0x13D65, 0x0000, False, 0xFFFF),
}


def _sum8(data: bytes) -> int:
    return sum(data) & 0xFF


def _sum16(data: bytes) -> int:
    return sum(data) & 0xFFFF


def _xor8(data: bytes) -> int:
    return reduce(lambda a, b: a ^ b, data, 0)


_SIMPLE: dict[str, tuple[ChecksumFn, int]] = {"sum8": (_sum8, 1), "sum16": (_sum16, 2), "xor8": (_xor8, 1)}

ALGORITHMS: tuple[str, ...] = (*_CRC16, *_SIMPLE)


def _crc16(name: str) -> ChecksumFn:
    poly, init, rev, xor_out = _CRC16[name]
    # crcmod applies xorOut to its internal init, so pass the register value it expects.
    fn: ChecksumFn = crcmod.mkCrcFun(poly, initCrc=init ^ xor_out, rev=rev, xorOut=xor_out)
    return fn


def checksum_fn(name: str) -> ChecksumFn:
    """The checksum function called ``name`` (see :data:`ALGORITHMS`); KeyError if unknown."""
    if name in _SIMPLE:
        return _SIMPLE[name][0]
    return _crc16(name)


def checksum_size(name: str) -> int:
    """How many bytes the checksum ``name`` occupies in a frame."""
    return _SIMPLE[name][1] if name in _SIMPLE else 2


crc16_arc: ChecksumFn = checksum_fn("crc16/arc")
