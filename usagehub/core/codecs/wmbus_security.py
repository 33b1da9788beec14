"""Wireless M-Bus / OMS security: TPL modes 5 and 7, the AFL MAC, the extended link layer's AES-CTR.

Pure functions over bytes and a 16-byte key (``cryptography`` does the AES).
A wrong key never yields garbage records: mode 5/7 plaintext must start with the
``2F2F`` fill, ELL plaintext must match its payload CRC, a mode 7 MAC must verify.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

from usagehub.core.codecs.wmbus_link import crc_en13757
from usagehub.errors import DecodeError

BLOCK = 16
_PAD7 = b"\x07" * 7


def _check_key(key: bytes) -> None:
    if len(key) != BLOCK:
        raise DecodeError("bad wM-Bus key", detail=f"{len(key)} bytes, AES-128 needs 16")


def _cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def _cmac(key: bytes, data: bytes) -> bytes:
    mac = CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


def _encrypted_part(payload: bytes, blocks: int) -> tuple[bytes, bytes]:
    size = blocks * BLOCK if blocks else len(payload) - len(payload) % BLOCK
    if size == 0 or size > len(payload):
        raise DecodeError("wM-Bus encrypted length invalid", detail=f"{blocks} blocks, {len(payload)} bytes")
    return payload[:size], payload[size:]


def _must_be_clear(plain: bytes, mode: int) -> bytes:
    if plain[:2] != b"\x2f\x2f":
        raise DecodeError("wM-Bus decryption failed", detail=f"mode {mode}: no 2F2F after decryption (wrong key?)")
    return plain


def decrypt_mode5(key: bytes, address: bytes, access: int, payload: bytes, blocks: int) -> tuple[bytes, bytes]:
    """AES-128-CBC with IV = M(2) A(6) ACC x 8: (decrypted ``blocks`` (CW bits 4-7), the clear rest)."""
    _check_key(key)
    encrypted, clear = _encrypted_part(payload, blocks)
    plain = _cbc_decrypt(key, address + bytes([access]) * 8, encrypted)
    return _must_be_clear(plain, 5), clear


def mode7_keys(key: bytes, counter: bytes, meter_id: bytes) -> tuple[bytes, bytes]:
    """OMS KDF-A: the session encryption and MAC keys from the message counter and meter id."""
    _check_key(key)
    tail = counter + meter_id + _PAD7
    return _cmac(key, b"\x00" + tail), _cmac(key, b"\x01" + tail)


def verify_mac(mac_key: bytes, authenticated: bytes, mac: bytes) -> None:
    """The AFL MAC: the first ``len(mac)`` bytes of AES-CMAC over MCL, MCR, [ML] and the TPL to its end."""
    if _cmac(mac_key, authenticated)[: len(mac)] != mac:
        raise DecodeError("wM-Bus MAC mismatch", detail="the AFL MAC does not verify (wrong key or tampered)")


def decrypt_mode7(enc_key: bytes, payload: bytes, blocks: int) -> tuple[bytes, bytes]:
    """AES-128-CBC, zero IV, derived key: (decrypted ``blocks``, the clear rest)."""
    encrypted, clear = _encrypted_part(payload, blocks)
    plain = _cbc_decrypt(enc_key, bytes(BLOCK), encrypted)
    return _must_be_clear(plain, 7), clear


def decrypt_ell(key: bytes, address: bytes, cc: int, sn: bytes, data: bytes) -> bytes:
    """ELL AES-128-CTR (IV = M A CC SN FN=0 BC=0) over payload CRC + payload; returns the checked payload."""
    _check_key(key)
    if len(data) < 3:
        raise DecodeError("wM-Bus ELL payload too short", detail=f"{len(data)} bytes")
    # the hop bit (0x10) of CC is set by repeaters on the way, so it stays out of the IV (jmbus vector)
    counter = address + bytes([cc & ~0x10]) + sn + b"\x00\x00\x00"
    decryptor = Cipher(algorithms.AES(key), modes.CTR(counter)).decryptor()
    plain = decryptor.update(data) + decryptor.finalize()
    return check_ell_crc(plain)


def check_ell_crc(plain: bytes) -> bytes:
    """ELL payload ``CRC(2, little-endian) payload``: the payload if the CRC matches."""
    if len(plain) < 3 or crc_en13757(plain[2:]) != int.from_bytes(plain[:2], "little"):
        raise DecodeError("wM-Bus decryption failed", detail="ELL payload CRC mismatch (wrong key?)")
    return plain[2:]
