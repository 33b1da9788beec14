"""Loading the published wM-Bus vectors (wmbusmeters, ioBroker.wmbus) and comparing numbers across units."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

CONFORMANCE = Path(__file__).resolve().parents[3].parent / "shared" / "conformance"
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
