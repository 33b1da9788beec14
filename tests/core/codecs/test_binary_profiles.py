"""The shipped legacy profiles load and turn frames into the meters they promise."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tests.core.codecs.binary_records import load_profile, pulse_record
from tests.core.codecs.conformance_dir import CONFORMANCE
from usagehub.core.codecs.checksums import crc16_arc
from usagehub.core.decode import ProfileSet
from usagehub.core.events import MeterKind, RawMessage, UsageEvent

NAMES = ("acme-pulse-bin", "mbus-heat-meter", "sia-dc09-panel")
PROFILES = ProfileSet([load_profile(n) for n in NAMES])
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LIBMBUS = CONFORMANCE / "libmbus" / "test" / "test-frames"


def _decode(profile: str, payload: bytes) -> dict[str, UsageEvent]:
    message = RawMessage(
        transport="binary", topic=profile, payload=payload, received_at=NOW, meta={"profile": profile}
    )
    return {e.meter: e for e in PROFILES.decode(message)}


@pytest.mark.parametrize("name", NAMES)
def test_profile_loads_and_id_equals_file_stem(name: str) -> None:
    assert load_profile(name).id == name


def test_pulse_record_meters() -> None:
    events = _decode("acme-pulse-bin", pulse_record(energy_wh=1_234_567, voltage_dv=2301))
    assert events["energy"].value == Decimal("1234.567") and events["energy"].kind is MeterKind.CUMULATIVE
    assert events["voltage"].value == Decimal("230.1")
    assert events["energy"].device_id == "7" and events["energy"].event_id == "1"
    assert events["energy"].ts == datetime.fromtimestamp(1_700_000_000, UTC)


def test_mbus_heat_meter_energy_and_volume_are_cumulative() -> None:
    frame = bytes(int(t, 16) for t in (LIBMBUS / "kamstrup_multical_601.hex").read_text().split())
    events = _decode("mbus-heat-meter", frame)
    assert (events["heat_energy"].value, events["heat_energy"].unit) == (Decimal("37351"), "kWh")
    assert (events["volume"].value, events["volume"].kind) == (Decimal("561.08"), MeterKind.CUMULATIVE)
    assert events["heat_energy"].device_id == "6855817"


def _dc09(data: str, seq: str = "0001") -> bytes:
    body = f'"SIA-DCS"{seq}L0#4242[#4242|{data}]_11:59:00,05-01-2024'
    return f"\n{crc16_arc(body.encode()):04X}{len(body):04X}{body}\r".encode()


def test_panel_arm_disarm_alarm_trouble() -> None:
    armed = _decode("sia-dc09-panel", _dc09("Nri1/CL501"))
    assert armed["armed"].value == 1 and armed["armed"].kind is MeterKind.STATE and "alarms" not in armed
    disarmed = _decode("sia-dc09-panel", _dc09("Nri1/OP501", "0002"))
    assert disarmed["armed"].value == 0
    alarm = _decode("sia-dc09-panel", _dc09("Nri1/BA007", "0003"))
    assert alarm["alarms"].value == 1 and "armed" not in alarm and "troubles" not in alarm
    trouble = _decode("sia-dc09-panel", _dc09("Nri1/AT000", "0004"))
    assert trouble["troubles"].value == 1
    test = _decode("sia-dc09-panel", _dc09("Nri1/RP000", "0005"))
    assert set(test) == {"messages"}  # kept (not quarantined), not billed
    assert alarm["alarms"].device_id == "4242" and alarm["alarms"].ts == datetime(
        2024, 5, 1, 11, 59, tzinfo=UTC
    )
