"""M-Bus decoder against libmbus's published vectors (normalized XML), frame by frame.

The test walks the whole folder, so frames added there are checked too.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.core.codecs.conformance_dir import CONFORMANCE
from usagehub.core.codecs.mbus import decode_frame
from usagehub.errors import DecodeError

LIBMBUS = CONFORMANCE / "libmbus" / "test"
GOOD = sorted((LIBMBUS / "test-frames").glob("*.hex"))
ERRORS = sorted((LIBMBUS / "error-frames").glob("*.hex"))


def _frame(path: Path) -> bytes:
    return bytes(int(tok, 16) for tok in path.read_text().split())


def _tag(name: str, text: str) -> str | None:
    m = re.search(f"<{name}>(.*?)</{name}>", text, re.S)
    return None if m is None else m.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")


def _same_value(expected: str | None, got: Any) -> bool:
    if isinstance(got, int | Decimal):
        # libmbus prints a double with %f: agree to its 6 decimals (relative 1e-9 for huge values)
        want = Decimal(expected or "nan")
        return abs(want - Decimal(got)) <= max(Decimal("0.0000005"), abs(want) * Decimal("1e-9"))
    return bool((expected or "") == got)


def test_vectors_are_present() -> None:
    assert len(GOOD) >= 60, f"libmbus vectors missing under {LIBMBUS}"
    assert len(ERRORS) >= 20


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_frame_agrees_with_libmbus(path: Path) -> None:
    doc = decode_frame(_frame(path))
    xml = path.with_suffix(".norm.xml").read_text(encoding="utf-8")
    slave = _tag("SlaveInformation", xml) or ""
    for key, tag in (
        ("id", "Id"),
        ("manufacturer", "Manufacturer"),
        ("medium", "Medium"),
        ("access_number", "AccessNumber"),
    ):
        expected = _tag(tag, slave)
        if expected is not None:
            assert str(doc[key]) == expected, key
    records = re.findall(r'<DataRecord id="\d+">(.*?)</DataRecord>', xml, re.S)
    assert len(doc["records"]) == len(records)
    fixed = doc["structure"] == "fixed"
    for i, (body, rec) in enumerate(zip(records, doc["records"], strict=True)):
        unit = rec["raw_unit"] if fixed else rec["unit"]
        value = rec["raw_value"] if fixed else rec["value"]
        assert _tag("Unit", body) == unit, f"record {i} unit"
        if (quantity := _tag("Quantity", body)) is not None:
            assert quantity == rec["quantity"], f"record {i} quantity"
        assert _same_value(_tag("Value", body), value), f"record {i}: {_tag('Value', body)!r} != {value!r}"
        assert _tag("Function", body) == rec["function"], f"record {i} function"
        if (storage := _tag("StorageNumber", body)) is not None:
            assert int(storage) == rec["storage"]
        if (tariff := _tag("Tariff", body)) is not None:
            assert int(tariff) == rec["tariff"] and int(_tag("Device", body) or -1) == rec["subunit"]
        assert not isinstance(value, float)


@pytest.mark.parametrize("path", ERRORS, ids=lambda p: p.stem)
def test_error_frame_is_a_clear_decode_error(path: Path) -> None:
    with pytest.raises(DecodeError) as info:
        decode_frame(_frame(path))
    assert info.value.reason
    expected = path.with_suffix(".xml")
    if expected.exists():
        error = _tag("Error", expected.read_text(encoding="utf-8"))
        if error is not None:
            assert info.value.detail is not None and error.replace("\u00b4", "'") == info.value.detail


def test_heat_meter_registers_for_profiles() -> None:
    doc = decode_frame(_frame(LIBMBUS / "test-frames" / "kamstrup_multical_601.hex"))
    assert doc["current"]["energy"] == Decimal("37351000")  # Wh
    assert doc["current"]["volume"] == Decimal("561.08")  # m^3
    assert doc["manufacturer"] == "KAM" and doc["medium"] == "Heat: Outlet"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda f: f[:-2] + bytes([(f[-2] + 1) & 0xFF]) + f[-1:],
        lambda f: f[:-1] + b"\x17",
        lambda f: f[:1] + b"\x05" + f[2:],
        lambda f: f[:4] + b"\x53" + f[5:],
    ],
)
def test_broken_frames(mutate: Any) -> None:
    with pytest.raises(DecodeError):
        decode_frame(mutate(_frame(LIBMBUS / "test-frames" / "kamstrup_multical_601.hex")))
