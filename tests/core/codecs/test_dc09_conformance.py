"""DC-09 decoder against pysiaalarm and ioBroker.sia vectors; strict CRC/length; ACK/NAK/DUH replies."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.core.codecs.conformance_dir import CONFORMANCE
from usagehub.core.codecs.dc09 import (
    CODEC,
    Dc09Error,
    Dc09Options,
    ack,
    decrypt,
    duh,
    key_bytes,
    nak,
    unframe,
    verify,
)
from usagehub.errors import DecodeError

CASES = json.loads(
    (CONFORMANCE / "pysiaalarm/tests/test_sia_package_cases.EventParsing.EXTRACTED.json").read_text()
)["cases"]
KEY = "AAAAAAAAAAAAAAAA"
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def _decoder(**options: Any) -> Any:
    return CODEC.compile(Dc09Options.model_validate({"type": "dc09", **options}))


def _checked(case: dict[str, Any]) -> bool:
    check = case.get("recomputed_check_not_upstream")
    return bool(check and check["crc_matches"] and check["length_matches"])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["case"])
def test_pysiaalarm_case_lenient(case: dict[str, Any]) -> None:
    """With strict checks off, every vector decodes as upstream expects (encrypted ones: without a key)."""
    expected, line = case["expected"], case["line"].encode()
    decode = _decoder(strict=False, require_timestamp=False)
    if expected["error"]:
        with pytest.raises(DecodeError):
            decode(line)
        return
    if expected["encrypted_flag"]:
        with pytest.raises(Dc09Error) as info:
            decode(line)  # no key configured for the account: the receiver answers DUH
        assert info.value.reply == "DUH"
        frame = verify(unframe(line), strict=False)
        assert (frame.account, frame.encrypted) == (expected["account"], True)
        return
    doc = decode(line)
    first = doc["events"][0]
    assert doc["account"] == expected["account"]
    assert (first["code"], first["description"]) == (expected["code"], expected["code_type"])
    assert bool(doc["extended"]) == expected["extended_data_flag"]
    assert doc["encrypted"] is False


@pytest.mark.parametrize(
    "case", [c for c in CASES if "recomputed_check_not_upstream" in c], ids=lambda c: c["case"]
)
def test_strict_receiver_rejects_bad_crc_or_length_with_nak(case: dict[str, Any]) -> None:
    decode = _decoder(require_timestamp=False, keys={"AAAB": KEY})
    if _checked(case):
        if case["case"] == "case_encrypted_adm":  # valid frame, but no key is published for account 123F
            with pytest.raises(Dc09Error) as no_key:
                decode(case["line"].encode())
            assert no_key.value.reply == "DUH"
            return
        doc = decode(case["line"].encode())
        assert doc["account"] == case["expected"]["account"]
        return
    with pytest.raises(Dc09Error, match=r"bad (CRC|length)") as info:
        decode(case["line"].encode())
    assert info.value.reply == "NAK"


def test_null_message_decrypts_to_published_plaintext() -> None:
    case = next(c for c in CASES if c["case"] == "case_null")
    frame = verify(unframe(case["line"].encode()))
    plain = case["recomputed_check_not_upstream"]["aes128cbc_zero_iv_key_ascii_AAAAAAAAAAAAAAAA_plaintext"]
    assert decrypt(frame.rest, key_bytes(KEY)) == plain[plain.index("]") :]
    doc = _decoder(keys={"AAAB": KEY})(case["line"].encode())
    assert doc["message_type"] == "NULL" and doc["timestamp"] == "2020-07-05T18:24:52+00:00"
    assert doc["events"][0]["category"] == "supervision"


@pytest.mark.parametrize("name", ["siaCommand", "siaCommandENC"])
def test_iobroker_frames(name: str) -> None:
    raw = (CONFORMANCE / "ioBroker.sia/test" / name).read_bytes()
    doc = _decoder(keys={"12345": "0123456789ABCDEF"})(raw)
    assert doc["account"] == "12345" and doc["encrypted"] is (name == "siaCommandENC")
    event = doc["events"][0]
    assert (event["code"], event["zone"], event["category"]) == ("UT", "0000", "trouble")
    assert event["text"].startswith("$PR,SCOMPARSA")


def test_iobroker_encrypted_needs_the_right_key() -> None:
    raw = (CONFORMANCE / "ioBroker.sia/test/siaCommandENC").read_bytes()
    with pytest.raises(DecodeError):
        _decoder(keys={"12345": "FEDCBA9876543210"})(raw)


def test_adm_cid_arm_and_disarm() -> None:
    def line(body: str) -> bytes:
        return ack_like(f'"ADM-CID"0001L0#1234[#1234|{body}]_10:00:00,05-01-2024')

    decode = _decoder()
    closing = decode(line("3401 01 012"))["events"][0]
    opening = decode(line("1401 01 012"))["events"][0]
    burglary = decode(line("1130 02 005"))["events"][0]
    assert (closing["code"], closing["armed"], closing["zone"], closing["partition"]) == (
        "CL",
        True,
        "012",
        "01",
    )
    assert (opening["code"], opening["armed"]) == ("OP", False)
    assert (burglary["code"], burglary["category"]) == ("BA", "alarm") and "armed" not in burglary


def ack_like(body: str) -> bytes:
    """Frame a body with a correct CRC and length (the way a panel does)."""
    from usagehub.core.codecs.checksums import crc16_arc

    return f"\n{crc16_arc(body.encode()):04X}{len(body):04X}{body}\r".encode()


def test_unsupported_message_type_is_duh() -> None:
    with pytest.raises(Dc09Error) as info:
        _decoder()(ack_like('"SIA-XYZ"0001L0#1234[]_10:00:00,05-01-2024'))
    assert info.value.reply == "DUH"


def test_missing_timestamp_is_refused_when_required() -> None:
    with pytest.raises(Dc09Error, match="timestamp"):
        _decoder()(ack_like('"SIA-DCS"0001L0#1234[#1234|Nri1/CL501]'))


def test_replies_are_valid_frames() -> None:
    frame = verify(unframe(ack_like('"SIA-DCS"0042R12L3#ABC1[#ABC1|Nri1/CL501]_10:00:00,05-01-2024')))
    reply = ack(frame, NOW)
    assert reply.startswith(b"\n") and reply.endswith(b"\r")
    back = verify(unframe(reply))
    assert (back.message_id, back.seq, back.receiver, back.line, back.account) == (
        "ACK",
        "0042",
        "12",
        "3",
        "ABC1",
    )
    assert verify(unframe(nak(NOW))).message_id == "NAK"
    assert b"_12:00:00,05-01-2024" in nak(NOW)
    assert verify(unframe(duh(frame, NOW))).message_id == "DUH"


def test_encrypted_ack_decrypts_with_the_account_key() -> None:
    raw = (CONFORMANCE / "ioBroker.sia/test/siaCommandENC").read_bytes()
    frame = verify(unframe(raw))
    reply = ack(frame, NOW, key_bytes("0123456789ABCDEF"), pad="x")
    back = verify(unframe(reply))
    assert back.message_id == "ACK" and back.encrypted
    assert decrypt(back.rest, key_bytes("0123456789ABCDEF")) == "]_12:00:00,05-01-2024"


@pytest.mark.parametrize("key", ["A" * 16, "B" * 24, "C" * 32, "hex:" + "00" * 32])
def test_aes_128_192_256_roundtrip(key: str) -> None:
    from usagehub.core.codecs.dc09 import _encrypted_part

    content = "|Nri1/BA007]_10:00:00,05-01-2024"
    body = f'"*SIA-DCS"0007L0#7777[{_encrypted_part(content, key_bytes(key), "p")}'
    doc = _decoder(keys={"7777": key})(ack_like(body))
    assert (doc["events"][0]["code"], doc["events"][0]["zone"]) == ("BA", "007")


def test_bad_key_size_is_refused_at_load() -> None:
    with pytest.raises(ValueError):
        Dc09Options.model_validate({"type": "dc09", "keys": {"1": "short"}})
