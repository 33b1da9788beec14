"""wM-Bus / OMS decoder against wmbusmeters' and ioBroker.wmbus's published telegrams (numbers, not names)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.core.codecs.wmbus_vectors import (
    IOBROKER,
    WMBUSMETERS,
    agrees,
    decoded_numbers,
    expected_numbers,
    key_of,
)
from usagehub.core.codecs.wmbus import WmbusDecoder, WmbusOptions
from usagehub.errors import DecodeError

# Fields wmbusmeters reads from manufacturer-specific records, or from records whose VIFE uses the
# combinable-extension table (FC xx: "phase 1"…), which this decoder keeps raw with unit "unknown".
DRIVER_SPECIFIC: dict[str, set[str]] = {
    "amiplus#1": {"voltage_at_phase_1_v"},
    "amiplus#2": {"voltage_at_phase_1_v", "voltage_at_phase_2_v", "voltage_at_phase_3_v"},
    "caltose#1": {"consumption_2_hca", "consumption_3_hca", "consumption_4_hca"},
    "caltose#3": {"consumption_2_hca", "consumption_3_hca", "consumption_4_hca"},
    "ebzwmbe#1": {"current_power_consumption_kw"},
    "em24#3": {f"{q}_at_phase_{n}_{u}" for q, u in (("amperage", "a"), ("voltage", "v")) for n in (1, 2, 3)},
    "fhkvdataiv#1": {"consumption_at_set_date_1_hca", "consumption_at_set_date_2_hca"},
    "hydroclimav2#1": {"average_ambient_temperature_c", "average_ambient_temperature_last_month_c",
                       "average_heater_temperature_last_month_c", "max_ambient_temperature_c",
                       "total_consumption_hca"},
    "hydroclimav2#2": {"*"},
    "qcaloric#2": {"*"},
}
# apator162 sends a proprietary payload after 2F2F: decryption is checked, its records are not M-Bus.
PROPRIETARY = {"serial_aes.msg#1"}


def _decoder(key: bytes | None, **options: Any) -> WmbusDecoder:
    return WmbusDecoder(WmbusOptions(type="wmbus", **options), lambda _meter_id: key)


def test_vectors_are_present() -> None:
    assert len(WMBUSMETERS) == 62 and len(IOBROKER) == 16


@pytest.mark.parametrize("vector", [v for v in WMBUSMETERS if v["id"] not in PROPRIETARY], ids=lambda v: v["id"])
def test_wmbusmeters_numbers(vector: dict[str, Any]) -> None:
    clear = vector["category_not_upstream"].endswith("predecrypted")
    doc = _decoder(key_of(vector), payload_already_clear=clear)(bytes.fromhex(vector["telegram_hex"]))
    header = vector.get("header_not_upstream") or {}
    if "id" in header:  # the link layer's address; a long TPL header may name another meter
        assert doc["link"]["id"] == header["id"] and doc["link"]["manufacturer"] == header["mfr"]
    expected_id = (vector["expected_json"] or {}).get("id", vector["meter_id_arg"])
    assert doc["id"] == expected_id
    have = decoded_numbers(doc)
    skip = DRIVER_SPECIFIC.get(vector["id"], set())
    missing = [
        (name, want) for name, want in expected_numbers(vector).items()
        if name not in skip and "*" not in skip and not agrees(want, have.get(name.rsplit("_", 1)[-1], set()))
    ]
    assert not missing


def test_most_wmbusmeters_numbers_agree() -> None:
    """The skip list stays small: at least 355 of the 400 comparable numbers agree."""
    agreed = total = 0
    for vector in WMBUSMETERS:
        if vector["id"] in PROPRIETARY:
            continue
        clear = vector["category_not_upstream"].endswith("predecrypted")
        doc = _decoder(key_of(vector), payload_already_clear=clear)(bytes.fromhex(vector["telegram_hex"]))
        have = decoded_numbers(doc)
        for name, want in expected_numbers(vector).items():
            total += 1
            agreed += agrees(want, have.get(name.rsplit("_", 1)[-1], set()))
    assert total >= 390 and agreed >= 355


def test_apator_decrypts_but_is_proprietary() -> None:
    vector = next(v for v in WMBUSMETERS if v["id"] == "serial_aes.msg#1")
    with pytest.raises(DecodeError, match="premature end of record"):
        _decoder(key_of(vector))(bytes.fromhex(vector["telegram_hex"]))
    wrong = bytes(15) + b"\x01"
    with pytest.raises(DecodeError, match="decryption failed"):
        _decoder(wrong)(bytes.fromhex(vector["telegram_hex"]))


@pytest.mark.parametrize(
    "category", ["mode5_encrypted", "mode7_encrypted", "ell_ctr_encrypted"]
)
def test_encrypted_without_key_is_refused_even_if_clear_allowed(category: str) -> None:
    vector = next(v for v in WMBUSMETERS if v["category_not_upstream"] == category)
    for clear in (False, True):
        with pytest.raises(DecodeError, match=r"no key|decryption failed|ELL payload CRC"):
            _decoder(None, payload_already_clear=clear)(bytes.fromhex(vector["telegram_hex"]))


@pytest.mark.parametrize("vector", [v for v in WMBUSMETERS if v["category_not_upstream"].endswith("predecrypted")],
                         ids=lambda v: v["id"])
def test_predecrypted_needs_the_profile_switch(vector: dict[str, Any]) -> None:
    with pytest.raises(DecodeError, match="no key"):
        _decoder(None)(bytes.fromhex(vector["telegram_hex"]))


def test_mode7_frame_b_sensostar() -> None:
    vector = next(v for v in WMBUSMETERS if v["category_not_upstream"] == "mode7_encrypted")
    doc = _decoder(key_of(vector))(bytes.fromhex(vector["telegram_hex"]))
    assert doc["frame_format"] == "B" and doc["security_mode"] == 7
    assert doc["current"]["energy"] == Decimal(9341000) and doc["current"]["volume"] == Decimal("1348.631")


def _iob(name: str) -> dict[str, Any]:
    return next(v for v in IOBROKER if v["id"] == name)


@pytest.mark.parametrize("name", ["oms-profile-a-mode5", "oms-profile-b-mode7-integrated"])
def test_oms_annex_gas_meter(name: str) -> None:
    vector = _iob(name)
    doc = _decoder(key_of(vector))(bytes.fromhex(vector["telegram_hex"]))
    assert (doc["manufacturer"], doc["medium"], doc["id"]) == ("ELS", "Gas", "12345678")
    assert len(doc["records"]) == 3 and doc["records"][0]["value"] == Decimal("28504.27")
    assert doc["frame_format"] == "A"
    assert ("mac" in doc["security"]) == (name.endswith("integrated"))


def test_oms_mode7_mac_is_checked() -> None:
    vector = _iob("oms-profile-b-mode7-integrated")
    telegram = bytes.fromhex(vector["recomputed_not_upstream"]["telegram_without_crcs"])
    tampered = bytearray(telegram)
    tampered[-1] ^= 0x01  # a bit of the ciphertext: the MAC no longer verifies
    with pytest.raises(DecodeError, match="MAC"):
        _decoder(key_of(vector))(bytes(tampered))
    assert _decoder(key_of(vector))(telegram)["records"][0]["value"] == Decimal("28504.27")


def test_oms_partial_encryption_and_frame_b() -> None:
    partial = _iob("oms-partial-encryption")
    doc = _decoder(key_of(partial))(bytes.fromhex(partial["telegram_hex"]))
    assert doc["manufacturer"] == "QDS" and doc["medium"] == "Heat Cost Allocator" and doc["id"] == "55667788"
    assert [r["value"] for r in doc["records"]][0::3] == [1234, 12345678]
    frame_b = _iob("oms-frame-b")
    doc = _decoder(None)(bytes.fromhex(frame_b["telegram_hex"]))
    assert doc["frame_format"] == "B" and doc["records"][0]["value"] == Decimal("876.543")


def test_ell_ctr_good_and_wrong_key() -> None:
    good, wrong = _iob("jmbus-decrypt-good-key"), _iob("jmbus-decrypt-wrong-key")
    doc = _decoder(key_of(good))(bytes.fromhex(good["telegram_hex"]))
    assert abs(doc["records"][1]["value"] - Decimal("474.24")) <= Decimal("0.01")
    with pytest.raises(DecodeError, match="decryption failed"):
        _decoder(key_of(wrong))(bytes.fromhex(wrong["telegram_hex"]))


@pytest.mark.parametrize("name", ["jmbus-general-1", "jmbus-general-2", "jmbus-magnetic-sensor-1",
                                  "jmbus-magnetic-sensor-2", "demo-1-lse", "demo-3-zri", "dif-64bit-int",
                                  "dif-64bit-mfct"])
def test_iobroker_expectations(name: str) -> None:
    vector = _iob(name)
    doc = _decoder(key_of(vector))(bytes.fromhex(vector["telegram_hex"]))
    for field, want in vector["expect"].items():
        if field in ("Manufacturer", "Id", "Version"):
            assert str(doc[field.lower()]) == str(want)
        elif field == "dataRecord.length":
            assert len(doc["records"]) == want
        elif field.endswith(".value"):
            got = doc["records"][int(field.split("[")[1].split("]")[0])]["value"]
            if isinstance(want, dict):
                assert abs(Decimal(got) - Decimal(str(want["closeTo"]))) <= Decimal(str(want["tol"]))
            elif isinstance(got, str):  # manufacturer data: we print hex bytes, upstream a number
                assert int(got.replace(" ", ""), 16) in (int(want), int.from_bytes(
                    bytes.fromhex(got.replace(" ", "")), "little"))
            else:
                assert Decimal(got) == Decimal(want)


def test_compact_long_frames_decode_as_clear_ell() -> None:
    """The Kamstrup long frames behind jmbus's compact tests: ELL says encrypted, payload is clear."""
    for name, count, index, value in (("jmbus-compact-1", 13, 12, "28.44"), ("jmbus-compact-2", 8, 7, "24.07")):
        doc = _decoder(None, payload_already_clear=True)(bytes.fromhex(_iob(name)["long_frame_hex"]))
        assert len(doc["records"]) == count
        assert abs(doc["records"][index]["value"] - Decimal(value)) <= Decimal("0.01")
