"""DLMS/COSEM pushes against smartmeter-datacollector's recorded L+G and Iskra messages (HDLC, GBT, ciphering)."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import pytest

from tests.core.codecs.conformance_dir import CONFORMANCE
from usagehub.core.codecs.dlms_push import DlmsPushDecoder, DlmsPushOptions
from usagehub.errors import DecodeError

DATA = json.loads((CONFORMANCE / "smartmeter-datacollector/tests/testdata.EXTRACTED.json").read_text())
VECTORS = {v["id"]: v for v in DATA["vectors"]}
TYPES: dict[str, list[str]] = DATA["upstream_type_map"]
# upstream's guesses when a push carries no scaler (README of the conformance folder)
NO_SCALER_FACTOR = {"CURRENT_L1": Decimal("0.01"), "CURRENT_L2": Decimal("0.01"), "CURRENT_L3": Decimal("0.01"),
                    "POWER_FACTOR": Decimal("0.001")}


def _decode(vector: dict[str, Any], **options: Any) -> dict[str, Any]:
    key = bytes.fromhex(vector["key"]) if vector["key"] else None
    decoder = DlmsPushDecoder(DlmsPushOptions(type="dlms_push", **options),
                              lambda title: None if title.endswith(":auth") else key)
    return decoder(bytes.fromhex("".join(vector["frames_hex"])))


def _by_type(values: dict[str, Any], name: str) -> Any:
    """Upstream's data point: its OBIS code with any channel (upstream ignores the B field)."""
    a, _, c, d, e, f = TYPES[name][0].split(".")
    pattern = re.compile(rf"^{a}\.\d+\.{c}\.{d}\.{e}\.{f}$")
    found = [v for obis, v in values.items() if pattern.match(obis)]
    return found[0] if found else None


@pytest.mark.parametrize("name", [n for n, v in VECTORS.items() if "values" in (v["expect"] or {})])
def test_values_agree_with_upstream(name: str) -> None:
    vector = VECTORS[name]
    doc = _decode(vector)
    assert doc["device"] == vector["expect"]["source"]
    approx = set(vector["expect"].get("approx", []))
    for kind, want in vector["expect"]["values"].items():
        got = _by_type(doc["values"], kind)
        assert got is not None, kind
        scaled = Decimal(got) * NO_SCALER_FACTOR.get(kind, Decimal(1))
        if kind in approx:  # upstream scales the E360's voltage by its meter configuration (x0.1)
            assert Decimal(str(want)) in (scaled, scaled / 10), kind
        else:
            assert scaled == Decimal(str(want)), kind


@pytest.mark.parametrize("name", [n for n, v in VECTORS.items() if "types_present" in (v["expect"] or {})])
def test_types_present_and_source(name: str) -> None:
    vector = VECTORS[name]
    doc = _decode(vector, require_authentication=False)
    assert doc["device"] == vector["expect"]["source"]
    for kind in vector["expect"]["types_present"]:
        assert _by_type(doc["values"], kind) is not None, kind


def test_first_push_timestamp_and_count() -> None:
    vector = VECTORS["lg_e450.UNENCRYPTED_VALID_DATA"]
    doc = _decode(vector)
    assert len(doc["body"]) == vector["expect"]["dlms_objects_count"]
    assert doc["datetime"] == "2021-07-06T14:58:16"  # the second, complete push of the two
    assert _by_type(doc["values"], "ACTIVE_ENERGY_P") == 886977


def test_encrypted_push_without_push_list() -> None:
    vector = VECTORS["lg_e450.ENCRYPTED_DATA_NO_PUSHLIST"]
    with pytest.raises(DecodeError, match="authentication key"):
        _decode(vector)  # its GCM tag needs the authentication key upstream does not give
    doc = _decode(vector, require_authentication=False)
    assert doc["security"] == "gcm (tag not checked)" and doc["system_title"] == "4C475A6773781FD0"
    assert len(doc["values"]) == vector["expect"]["dlms_objects_count"]
    assert all(re.fullmatch(vector["expect"]["all_logical_names_match"], o) for o in doc["values"])
    assert doc["values"]["1.0.1.8.0.255"] == 6226327


def test_extended_register_push() -> None:
    vector = VECTORS["lg_e450.UNENCRYPTED_EXTENDED_REGISTER_DATA"]
    assert _decode(vector)["values"][vector["expect"]["obis"]] == vector["expect"]["value"]


def test_wrong_key_and_missing_key() -> None:
    vector = VECTORS["lg_e570.ENCRYPTED_VALID_DATA"]
    wrong = dict(vector, key="00" * 16)
    with pytest.raises(DecodeError):
        _decode(wrong)
    with pytest.raises(DecodeError, match="no key"):
        _decode(dict(vector, key=None))


@pytest.mark.parametrize("name", ["lg_e450.UNENCRYPTED_INVALID_DATA", "lg_e450.inline_invalid_single_frame"])
def test_incomplete_pushes_are_refused(name: str) -> None:
    with pytest.raises(DecodeError):
        _decode(VECTORS[name])


def test_broken_checksums() -> None:
    frames = list(VECTORS["lg_e360.UNENCRYPTED_VALID_DATA_CFG2026"]["frames_hex"])
    raw = bytearray(bytes.fromhex(frames[0]))
    raw[-3] ^= 1  # FCS
    with pytest.raises(DecodeError, match="FCS"):
        DlmsPushDecoder(DlmsPushOptions(type="dlms_push"))(bytes(raw))
