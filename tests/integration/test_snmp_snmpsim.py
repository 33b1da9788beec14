"""The snmp adapter polls recorded real devices (snmpsim walks) and the profiles decode them."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from tests.adapters.snmp.agents import snmpsim
from tests.adapters.snmp.helpers import by_key, config, decode_all, settings, shipped
from usagehub.adapters.base import DeviceEndpoint
from usagehub.adapters.snmp.adapter import SnmpAdapter
from usagehub.core.codecs.snmp import decode_snmp
from usagehub.core.events import RawMessage
from usagehub.errors import ValidationFailed

pytestmark = pytest.mark.integration

WALKS = {
    "pdu": "UPS/apc-8641.snmprec",
    "pdu2": "UPS/apc-7902b.snmprec",
    "ups": "UPS/huawei-gse200m.snmprec.bz2",
    "ups2": "UPS/phoenixtec-power.snmprec.bz2",
    "cam": "camera/semac-ipcam-500.snmprec.bz2",
}
ENERGY = "1.3.6.1.4.1.318.1.1.26.4.3.1.9.1"
PROFILES = [shipped(n) for n in ("apc-ap8641", "ietf-ups-mib", "ietf-if-mib-switch", "ip-camera")]


@pytest.fixture(scope="module")
def sim_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with snmpsim(tmp_path_factory.mktemp("snmpsim"), WALKS) as port:
        yield port


async def _poll(tmp_path: Path, port: int, profile_id: str, community: str) -> list[RawMessage]:
    endpoint = DeviceEndpoint(
        device_id=community,
        profile_id=profile_id,
        address="127.0.0.1",
        port=port,
        secrets={"community": community},
    )
    async with SnmpAdapter(
        config(traps={"enabled": False}), settings(PROFILES, [endpoint], tmp_path)
    ) as adapter:
        assert adapter.scheduler is not None
        return await adapter.scheduler.poll_once(endpoint, adapter.plans[profile_id])


async def test_apc_pdu_device_and_outlets(tmp_path: Path, sim_port: int) -> None:
    messages = await _poll(tmp_path, sim_port, "apc-ap8641", "pdu")
    assert [m.topic for m in messages][:1] == ["poll"]
    assert {m.transport for m in messages} == {"snmp"}
    events = by_key(decode_all(PROFILES, messages))
    assert events["pdu", "energy"].value == Decimal("1951.6")  # 19516 tenths of kWh
    assert events["pdu", "power"].value == Decimal("1.21")  # 121 hundredths of kW
    assert events["pdu", "energy"].reset_marker.startswith("b")
    outlets = {d for d, m in events if m == "outlet_energy"}
    assert len(outlets) == 24
    assert events["pdu/1", "outlet_energy"].value == Decimal("304.6")
    assert events["pdu/1", "outlet_power"].value == Decimal(163)
    assert events["pdu", "energy"].ts == messages[0].received_at  # stamped with the response time


async def test_not_supported_values_are_absent_and_quarantined_when_nothing_is_left(
    tmp_path: Path, sim_port: int
) -> None:
    # The AP7902B answers -1 (not supported) for both energy and power: no reading, no marker change,
    # and a message without any reading goes to quarantine with a reason instead of vanishing.
    messages = await _poll(tmp_path, sim_port, "apc-ap8641", "pdu2")
    assert len(messages) == 1
    document = decode_snmp(messages[0].payload)
    assert document[ENERGY] == -1
    assert document["markers"] == {}
    with pytest.raises(ValidationFailed, match="no readings"):
        decode_all(PROFILES, messages)


async def test_ups_mib_battery_and_output_lines(tmp_path: Path, sim_port: int) -> None:
    events = by_key(decode_all(PROFILES, await _poll(tmp_path, sim_port, "ietf-ups-mib", "ups")))
    assert ("ups", "battery_charge") not in events  # Huawei answers -1
    assert ("ups", "battery_runtime") not in events
    assert events["ups", "battery_voltage"].value == Decimal("538.5")
    assert events["ups", "on_battery"].value == 0  # upsOutputSource = 3 (normal)
    assert events["ups/1", "output_power"].value == Decimal(34)
    assert events["ups/1", "output_load"].value == Decimal(8)


async def test_switch_counter64_rows_carry_discontinuity(tmp_path: Path, sim_port: int) -> None:
    events = by_key(decode_all(PROFILES, await _poll(tmp_path, sim_port, "ietf-if-mib-switch", "ups2")))
    assert events["ups2/2", "in_octets"].value == Decimal(4347905)
    assert events["ups2/2", "out_octets"].value == Decimal(6668400)
    assert events["ups2/2", "in_octets"].reset_marker.endswith("#0@0")
    assert events["ups2/1", "oper_up"].value == 1
    assert events["ups2/3", "oper_up"].value == 0


async def test_camera_counter32_rows(tmp_path: Path, sim_port: int) -> None:
    events = by_key(decode_all(PROFILES, await _poll(tmp_path, sim_port, "ip-camera", "cam")))
    assert events["cam/1", "in_octets"].value == Decimal(3863975956)
    assert events["cam/2", "out_octets"].value == Decimal(1468747318)
