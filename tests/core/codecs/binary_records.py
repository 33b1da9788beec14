"""Helpers that build records for the acme-pulse-bin profile (40-byte layout)."""

from __future__ import annotations

import struct
from pathlib import Path

from usagehub.core.codecs.checksums import checksum_fn
from usagehub.core.profiles import Profile, parse_profile

PROFILES = Path(__file__).resolve().parents[3] / "device_profiles"
_CRC = checksum_fn("crc16/modbus")


def load_profile(name: str) -> Profile:
    """A shipped profile by id."""
    return parse_profile((PROFILES / f"{name}.yaml").read_text(), name, expected_id=name)


def pulse_record(
    device: int = 7,
    seq: int = 1,
    ts: int = 1_700_000_000,
    energy_wh: int = 123_456,
    water_l: int = 42,
    voltage_dv: int = 2301,
    temp_dc: int = -15,
    flags: int = 0x80,
    status: int = 0,
    serial: bytes = b"SN000001",
    fw: int = 0x0102,
) -> bytes:
    """One valid 40-byte record, CRC-16/MODBUS over the first 38 bytes (big-endian)."""
    body = bytes.fromhex("a55a") + struct.pack(
        ">IIIIIHhBB8sH", device, seq, ts, energy_wh, water_l, voltage_dv, temp_dc, flags, status, serial, fw
    )
    assert len(body) == 38
    return body + _CRC(body).to_bytes(2, "big")
