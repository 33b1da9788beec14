"""Hostile bytes for the DLMS push decoder: only DecodeError, quickly, with and without a key."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from tests.core.codecs.test_dlms_push_conformance import DATA
from tests.core.codecs.test_fuzz_decoders import _mutations, _survives
from usagehub.core.codecs.dlms_push import DlmsPushDecoder, DlmsPushOptions

SEEDS = [bytes.fromhex("".join(v["frames_hex"])) for v in DATA["vectors"]]
KEY = bytes.fromhex(next(v["key"] for v in DATA["vectors"] if v["key"]))
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(_mutations(SEEDS))
def test_mutated_pushes(payload: bytes) -> None:
    _survives(DlmsPushDecoder(DlmsPushOptions(type="dlms_push", require_authentication=False),
                              lambda title: None if title.endswith(":auth") else KEY), payload)
    _survives(DlmsPushDecoder(DlmsPushOptions(type="dlms_push")), payload)
