"""The DLMS pieces against dlms-cosem's own test bytes: an HDLC UI frame with a data-notification,
general-glo-ciphering (GCM tag verified) and a bare data-notification."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from tests.core.codecs.conformance_dir import CONFORMANCE
from usagehub.core.codecs.dlms_hdlc import join_apdu
from usagehub.core.codecs.dlms_push import DlmsPushDecoder, DlmsPushOptions, decipher, push_values
from usagehub.errors import DecodeError

CASES = {c["id"]: c for c in json.loads((CONFORMANCE / "dlms-cosem/tests/tests.EXTRACTED.json").read_text())["vectors"]}


def _hex(case: str, index: int = 0) -> bytes:
    return bytes.fromhex(CASES[case]["byte_values"][index]["hex"])


def test_hdlc_ui_frame_with_data_notification() -> None:
    frame = _hex("tests/test_hdlc/test_hdlc.py::TestUnnumberedInformationFrame::test_parse")
    doc = DlmsPushDecoder(DlmsPushOptions(type="dlms_push"))(frame)
    assert doc["datetime"] is None and doc["security"] == "none"
    first = doc["body"][1]
    assert first == ["1.0.1.7.0.255", 1122, [0, 27]]  # register value with its scaler_unit (W)
    assert join_apdu(frame)[:1] == b"\x0f"
    assert doc["values"]["1.0.1.7.0.255"] == 1122
    assert doc["values"]["1.0.51.7.0.255"] == Decimal("7.5")  # 75 with scaler -1
    assert doc["values"]["0.0.1.0.0.255"] == "07E30C1001073B28FF8000FF"


def test_general_glo_ciphering_with_tag() -> None:
    case = "tests/test_general_global_cipher.py::test_gen_glo_cipher_to_apdu"
    apdu, title, key = _hex(case, 0), _hex(case, 1), _hex(case, 2)
    assert apdu[2:10] == title
    plain, how = decipher(apdu, key, key, require_authentication=True)  # upstream uses the key for both
    assert how == "gcm"
    assert plain == _hex("tests/test_xdlms/test_data_notification.py::TestDataNotification::test_transform_bytes")
    with pytest.raises(DecodeError, match="GCM tag"):
        decipher(apdu, key, bytes(16), require_authentication=True)
    with pytest.raises(DecodeError, match="authentication key"):
        decipher(apdu, key, None, require_authentication=True)


def test_bare_data_notification_body() -> None:
    case = "tests/test_xdlms/test_data_notification.py::TestDataNotification::test_transform_bytes"
    apdu = _hex(case, 0)
    body = _hex(case, 1)
    from usagehub.core.codecs.dlms_push import _notification

    doc = _notification(apdu)
    assert doc["datetime"] is None and doc["invoke_id"] == 475
    assert doc["body"] == body[2:].hex().upper()  # one octet string of 0x22 bytes, kept as hex
    assert push_values(doc["body"]) == ({}, None)
