"""The dlms_hdlc framing keeps each push's HDLC frames together; the shipped profile reads its meters."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from tests.core.codecs.binary_records import load_profile
from tests.core.codecs.test_dlms_push_conformance import VECTORS
from usagehub.adapters.binary.framing import default_framing, make_framer
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage

PROFILE = load_profile("dlms-push-meter")


def _frames(name: str) -> list[bytes]:
    return [bytes.fromhex(f) for f in VECTORS[name]["frames_hex"]]


def test_pushes_are_cut_whole_from_a_byte_stream() -> None:
    spec = default_framing(PROFILE.decode)
    assert spec is not None and spec.type == "dlms_hdlc"
    framer = make_framer(spec)
    first, second = "lg_e450.UNENCRYPTED_VALID_DATA_CFG2026", "lg_e360.UNENCRYPTED_VALID_DATA_CFG2026"
    stream = b"".join(_frames(first) + _frames(second))
    out = []
    for i in range(0, len(stream), 7):  # arbitrary TCP segment boundaries
        out += framer.feed(stream[i : i + 7])
    assert out == [b"".join(_frames(first)), b"".join(_frames(second))]
    assert framer.flush() == b""


def test_a_broken_frame_comes_out_for_quarantine() -> None:
    framer = make_framer(default_framing(PROFILE.decode))  # type: ignore[arg-type]
    frames = _frames("lg_e570.UNENCRYPTED_VALID_DATA_CFG2026")
    bad = bytearray(frames[1])
    bad[-3] ^= 0xFF
    out = framer.feed(frames[0] + bytes(bad) + b"".join(frames))
    assert out[0] == frames[0] + bytes(bad) and out[1] == b"".join(frames)


def test_profile_meters() -> None:
    payload = b"".join(_frames("lg_e450.UNENCRYPTED_VALID_DATA_CFG2026"))
    message = RawMessage(transport="binary", topic="", payload=payload, received_at=datetime(2026, 5, 5, tzinfo=UTC),
                         meta={"profile": "dlms-push-meter"})
    events = {e.meter: e for e in ProfileSet([PROFILE]).decode(message)}
    assert events["active_energy_import"].value == Decimal("482.939")
    assert events["active_energy_import"].device_id == "LGZ1030653520967"
    assert events["active_power_import"].value == Decimal(28)
