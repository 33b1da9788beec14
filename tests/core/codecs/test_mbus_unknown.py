"""M-Bus records whose VIF/VIFE has no table entry are kept raw; the rest of the frame decodes."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from tests.core.codecs.conformance_dir import CONFORMANCE
from usagehub.core.codecs.mbus import decode_frame
from usagehub.errors import DecodeError

LIBMBUS = CONFORMANCE / "libmbus" / "test" / "test-frames"


def _long_frame(user_data: bytes) -> bytes:
    body = bytes([0x08, 0x05, 0x72]) + user_data
    return bytes([0x68, len(body), len(body), 0x68]) + body + bytes([sum(body) & 0xFF, 0x16])


HEADER = bytes.fromhex("78563412" "2D2C" "01" "04" "2A" "00" "27B6")  # id 12345678, KKK, heat, sig B627
ENERGY = bytes.fromhex("04" "06" "39300000")  # 12345 kWh (VIF 0x06 = 10^3 Wh)
VOLUME = bytes.fromhex("0C" "14" "78563400")  # BCD 345678 x 0.01 m^3


@pytest.mark.parametrize(
    ("record", "raw_value", "reason"),
    [
        (bytes.fromhex("04" "7B" "D2040000"), 1234, "VIF=0x7B"),
        (bytes.fromhex("02" "7D" "3412"), 0x1234, "VIF=0x7D"),
        (bytes.fromhex("0B" "7B" "563412"), 123456, "VIF=0x7B"),  # BCD kept as its digits
        (bytes.fromhex("04" "93" "44" "01000000"), 1, "VIFE=0x44"),  # reserved combinable VIFE
        (bytes.fromhex("0D" "7D" "03" "414243"), "41 42 43", "VIF=0x7D"),
    ],
)
def test_unknown_record_is_kept_and_the_others_decode(record: bytes, raw_value: object, reason: str) -> None:
    doc = decode_frame(_long_frame(HEADER + ENERGY + record + VOLUME))
    energy, unknown, volume = doc["records"]
    assert unknown["unit"] == "unknown"
    assert unknown["value"] == raw_value
    assert reason in unknown["quantity"]
    assert unknown["raw"] == record[-len(unknown["raw"]) // 2 :].hex().upper()
    assert energy["value"] == Decimal(12345000) and energy["unit"] == "Wh"
    assert volume["value"] == Decimal("3456.78") and volume["unit"] == "m^3"
    # an unknown record is never a register: profiles read $.current and it is not there
    assert doc["current"] == {"energy": Decimal(12345000), "volume": Decimal("3456.78")}


def test_unknown_record_first_and_last() -> None:
    doc = decode_frame(_long_frame(HEADER + bytes.fromhex("017D05") + ENERGY + bytes.fromhex("017B09")))
    assert [r["unit"] for r in doc["records"]] == ["unknown", "Wh", "unknown"]
    assert [r["value"] for r in doc["records"]][::2] == [5, 9]


def test_truncated_unknown_record_is_still_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="premature end"):
        decode_frame(_long_frame(HEADER + ENERGY + bytes.fromhex("047BD204")))


def test_signature_in_libmbus_byte_order() -> None:
    assert decode_frame(_long_frame(HEADER + ENERGY))["signature"] == "B627"
    frame = bytes(int(t, 16) for t in (LIBMBUS / "example_data_01.hex").read_text().split())
    expected = (LIBMBUS / "example_data_01.xml").read_text(encoding="latin-1")
    signature = decode_frame(frame)["signature"]
    assert f"<Signature>{signature}</Signature>" in expected and signature == "B627"


def test_pymeterbus_wep_indoor() -> None:
    """The values pyMeterBus's tests/test_weptech.py expects (record 3, manufacturer RSSI, aside)."""
    doc = decode_frame((CONFORMANCE / "pyMeterBus/tests/test-frames/WEP-indoor.blob").read_bytes())
    values = [r["value"] for r in doc["records"]]
    assert len(values) == 6
    assert values[0] == 64000449 and values[1] == 600 and values[3] == 22 and values[5] == 0
    assert values[4] == Decimal("53.1") and doc["records"][4]["unit"] == "%"


def test_profiles_meter_only_known_records_unless_mapped() -> None:
    from datetime import UTC, datetime

    from usagehub.core.decode import ProfileSet
    from usagehub.core.events import RawMessage
    from usagehub.core.profiles import parse_profile

    shipped = (Path(__file__).resolve().parents[3] / "device_profiles" / "mbus-heat-meter.yaml").read_text()
    mapped = """
id: mbus-mapped
match: {transport: binary}
decode: {type: mbus}
device_id: "$.id"
meters:
  vendor_counter: {value: "$.records[1].value", kind: cumulative, unit: count, aggregation: sum}
"""
    profiles = ProfileSet([parse_profile(shipped, "mbus-heat-meter"), parse_profile(mapped, "mbus-mapped")])
    frame = _long_frame(HEADER + ENERGY + bytes.fromhex("047BD2040000") + VOLUME)
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def meters(profile: str) -> dict[str, Decimal]:
        msg = RawMessage(transport="binary", topic="", payload=frame, received_at=now, meta={"profile": profile})
        return {e.meter: e.value for e in profiles.decode(msg)}

    assert meters("mbus-heat-meter") == {"heat_energy": Decimal(12345), "volume": Decimal("3456.78")}
    assert meters("mbus-mapped") == {"vendor_counter": Decimal(1234)}
