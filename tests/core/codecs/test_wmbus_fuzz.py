"""Hostile wM-Bus bytes: the decoder raises only DecodeError, quickly, with or without keys."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core.codecs.test_fuzz_decoders import _mutations, _survives
from tests.core.codecs.wmbus_vectors import IOBROKER, WMBUSMETERS, key_of
from usagehub.core.codecs.wmbus import WmbusDecoder, WmbusOptions

_SEEDS = [v for v in WMBUSMETERS + IOBROKER if v.get("telegram_hex")]
SEEDS = [bytes.fromhex(v["telegram_hex"]) for v in _SEEDS]
KEYS = {i: key_of(v) for i, v in enumerate(_SEEDS)}
ANY_KEY = next(k for k in KEYS.values() if k)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(_mutations(SEEDS), st.booleans(), st.sampled_from(["auto", "A", "B", "none"]))
def test_mutated_telegrams(payload: bytes, clear: bool, frame_format: str) -> None:
    options = WmbusOptions(type="wmbus", payload_already_clear=clear, frame_format=frame_format)  # type: ignore[arg-type]
    _survives(WmbusDecoder(options, lambda _id: ANY_KEY), payload)
    _survives(WmbusDecoder(options), payload)


@FUZZ
@given(st.binary(max_size=300))
def test_random_hex_text(payload: bytes) -> None:
    _survives(WmbusDecoder(WmbusOptions(type="wmbus", encoding="hex")), payload.hex().encode() + payload[:3])
