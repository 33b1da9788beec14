"""The snmp codec: adapter payloads decode, anything else raises DecodeError only."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usagehub.core.codecs import get_codec
from usagehub.core.codecs.snmp import SnmpOptions, decode_snmp, encode_payload
from usagehub.errors import DecodeError


def test_poll_payload_puts_varbinds_at_top_level() -> None:
    payload = encode_payload(
        {
            "kind": "poll",
            "ts": "2024-05-01T10:00:00+00:00",
            "device_id": "pdu",
            "uptime_ticks": 42,
            "boot": "b1714550000",
            "varbinds": {"1.3.6.1.2.1.1.3.0": 42, "1.3.6.1.4.1.1.1": None, "1.3.6.1.4.1.1.2": "x"},
            "types": {"1.3.6.1.2.1.1.3.0": "TimeTicks"},
            "markers": {"1.3.6.1.2.1.1.3.0": "b1714550000#0"},
        }
    )
    document = decode_snmp(payload)
    assert document["1.3.6.1.2.1.1.3.0"] == 42 and document["1.3.6.1.4.1.1.1"] is None
    assert document["boot"] == "b1714550000" and document["markers"]["1.3.6.1.2.1.1.3.0"] == "b1714550000#0"
    assert document["kind"] == "poll"


def test_rejected_trap_fails_with_its_reason() -> None:
    payload = encode_payload(
        {"kind": "rejected", "ts": "2024-05-01T10:00:00+00:00", "reason": "unknown user"}
    )
    with pytest.raises(DecodeError, match="rejected snmp trap: unknown user"):
        decode_snmp(payload)


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "poll"},  # no ts
        {"kind": "poll", "ts": 5},
        {"kind": "poll", "ts": "t", "varbinds": {"not-an-oid": 1}},
        {"kind": "poll", "ts": "t", "varbinds": {"1.3": [1]}},
        {"kind": "poll", "ts": "t", "varbinds": {"1.3": True}},
        {"kind": "poll", "ts": "t", "markers": {"1.3": 1}},
        {"kind": "poll", "ts": "t", "uptime_ticks": "7"},
        {"kind": "nope", "ts": "t"},
    ],
)
def test_malformed_payloads_are_decode_errors(body: dict[str, object]) -> None:
    with pytest.raises(DecodeError):
        decode_snmp(encode_payload(body))


def test_registered_and_options_validated() -> None:
    codec = get_codec("snmp")
    assert codec.compile(SnmpOptions(type="snmp")) is decode_snmp
    assert SnmpOptions(type="snmp", discontinuity_oid=".1.3.6.1").discontinuity_oid == "1.3.6.1"
    with pytest.raises(ValueError, match="numeric"):
        SnmpOptions(type="snmp", discontinuity_oid="ifCounterDiscontinuityTime")


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=200)
    | _json.map(orjson.dumps)
    | st.dictionaries(
        st.sampled_from(
            ["v", "kind", "ts", "varbinds", "markers", "types", "uptime_ticks", "device_id", "reason"]
        ),
        _json,
    ).map(orjson.dumps)
)
def test_hostile_bytes_only_raise_decode_error(payload: bytes) -> None:
    try:
        document = decode_snmp(payload)
    except DecodeError:
        return
    assert isinstance(document, dict)
