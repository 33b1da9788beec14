"""Loading the published wM-Bus vectors (wmbusmeters, ioBroker.wmbus) and comparing numbers across units."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from tests.core.codecs.conformance_dir import CONFORMANCE

WMBUSMETERS = json.loads((CONFORMANCE / "wmbusmeters/drivers/src/xmq-tests.EXTRACTED.json").read_text())["vectors"]
IOBROKER = json.loads((CONFORMANCE / "ioBroker.wmbus/lib/wmbus_decoder.test.EXTRACTED.json").read_text())["vectors"]

# our record unit -> {wmbusmeters field suffix: factor}
_KWH_PER_J = Decimal(1) / Decimal(3_600_000)
CONVERSIONS: dict[str, dict[str, Decimal]] = {
    "Wh": {"kwh": Decimal("0.001")},
    "J": {"gj": Decimal("1e-9"), "mj": Decimal("1e-6"), "kwh": _KWH_PER_J},
    "m^3": {"m3": Decimal(1)},
    "°C": {"c": Decimal(1)},
    "K": {"c": Decimal(1)},
    "W": {"kw": Decimal("0.001"), "w": Decimal(1)},
    "m^3/h": {"m3h": Decimal(1)},
    "Units for H.C.A.": {"hca": Decimal(1)},
    "%": {"rh": Decimal(1)},
    "bar": {"bar": Decimal(1)},
    "V": {"v": Decimal(1)},
    "A": {"a": Decimal(1)},
}
SUFFIXES = {s for table in CONVERSIONS.values() for s in table}


def key_of(vector: dict[str, Any]) -> bytes | None:
    """The vector's AES key, None for NOKEY."""
    key = vector.get("key")
    return bytes.fromhex(key) if key and key != "NOKEY" else None


def expected_numbers(vector: dict[str, Any]) -> dict[str, Decimal]:
    """wmbusmeters' numeric fields whose unit suffix we can convert (JSON or the fields line)."""
    expected: dict[str, Any] = dict(vector.get("expected_json") or {})
    if vector.get("expected_fields") and vector.get("expected_fields_names"):
        names = vector["expected_fields_names"]
        expected.update(zip(names, vector["expected_fields"].split(";"), strict=False))
    out = {}
    for name, value in expected.items():
        if isinstance(value, bool) or name.rsplit("_", 1)[-1] not in SUFFIXES:
            continue
        if isinstance(value, int | float | str):
            try:
                out[name] = Decimal(repr(value) if isinstance(value, float) else str(value))
            except ArithmeticError:
                continue
    return out


def decoded_numbers(document: dict[str, Any]) -> dict[str, set[Decimal]]:
    """Every numeric record value, converted to each wmbusmeters unit suffix it can express."""
    have: dict[str, set[Decimal]] = {}
    for record in document["records"]:
        value = record["value"]
        if isinstance(value, Decimal):
            for suffix, factor in CONVERSIONS.get(record["unit"], {}).items():
                have.setdefault(suffix, set()).add(value * factor)
    return have


def agrees(want: Decimal, candidates: set[Decimal]) -> bool:
    """Equal to wmbusmeters' printed (rounded) number."""
    return any(abs(got - want) <= Decimal("0.0051") + abs(want) * Decimal("1e-6") for got in candidates)


def type_f(year: int, month: int, day: int, hour: int, minute: int) -> bytes:
    """An M-Bus type F (CP32) date and time."""
    yy = year % 100
    return bytes([minute & 0x3F, hour & 0x1F, (day & 0x1F) | ((yy & 0x07) << 5), (month & 0x0F) | ((yy >> 3) << 4)])


def mode5_telegram(key: bytes, meter_id: str, *, litres: int, when: tuple[int, int, int, int, int],
                   access: int = 1, manufacturer: bytes = b"\x93\x15", medium: int = 0x07) -> bytes:
    """A CRC-free OMS telegram (short TPL, security mode 5) carrying a volume register and the meter time."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    ident = bytes.fromhex(meter_id)[::-1]
    volume = bytes.fromhex(f"{litres:08d}")[::-1]  # BCD, 8 digits, VIF 0x13 = litres
    plain = b"\x2f\x2f" + b"\x0c\x13" + volume + b"\x04\x6d" + type_f(*when)
    plain += b"\x2f" * (-len(plain) % 16)
    address = manufacturer + ident + bytes([0x01, medium])
    encryptor = Cipher(algorithms.AES(key), modes.CBC(address + bytes([access]) * 8)).encryptor()
    cipher = encryptor.update(plain) + encryptor.finalize()
    cw = (5 << 8) | ((len(plain) // 16) << 4)
    body = b"\x44" + address + b"\x7a" + bytes([access, 0x00]) + cw.to_bytes(2, "little") + cipher
    return bytes([len(body)]) + body
