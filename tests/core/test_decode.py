"""Decoding by profile: paths, timestamps, identity, scale, and hostile input never escaping as a crash."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usagehub.core.decode import DeviceIds, ProfileSet, to_decimal
from usagehub.core.events import MeterKind, RawMessage, content_event_id
from usagehub.core.paths import MISSING, PathSyntaxError, compile_path
from usagehub.errors import DecodeError
from usagehub.runtime.config import SHIPPED_PROFILES
from usagehub.runtime.profile_files import load_profiles

NOW = datetime(2026, 11, 1, tzinfo=UTC)
PROFILES = ProfileSet(load_profiles(SHIPPED_PROFILES))


def msg(topic: str, body: object) -> RawMessage:
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    return RawMessage(transport="mqtt", topic=topic, payload=payload, received_at=NOW)


def test_paths() -> None:
    doc = {"a": {"b": [10, {"c": "x"}]}, "odd key": 1}
    assert compile_path("$.a.b[1].c").get(doc) == "x"
    assert compile_path("$['odd key']").get(doc) == 1
    assert compile_path("$.a.b[5]").get(doc) is MISSING
    assert compile_path("$.a.b.c").get(doc) is MISSING
    assert compile_path("$").get(doc) is doc
    for bad in ("a.b", "$.a..b", "$[x]", "$.a b"):
        with pytest.raises(PathSyntaxError):
            compile_path(bad)


def test_smart_meter_reading_is_scaled_exactly_with_zone_and_identity() -> None:
    events = PROFILES.decode(msg("meters/m7/reading", {"seq": 42, "ts": "2026-10-05T12:00:00+02:00",
                                                       "energy_wh": 123456789, "power_w": 1234.5, "boot": 3}))
    by_meter = {e.meter: e for e in events}
    energy = by_meter["energy"]
    assert (energy.device_id, energy.event_id, energy.kind) == ("m7", "42", MeterKind.CUMULATIVE)
    assert energy.value == Decimal("123456.789") and energy.unit == "kWh"
    assert energy.ts == datetime(2026, 10, 5, 10, tzinfo=UTC)
    assert energy.reset_marker == "3"
    assert by_meter["power"].value == Decimal("1.2345")  # floats go through their shortest repr, not binary


def test_alarm_panel_events_and_states() -> None:
    alarm = PROFILES.decode(msg("security/p1/event", {"id": 9, "t": 1790848800000, "type": "alarm"}))
    assert [(e.meter, e.value) for e in alarm] == [("alarms", 1)]
    armed = PROFILES.decode(msg("security/p1/event", {"id": 10, "t": 1790848800000, "type": "state",
                                                      "state": "armed_away"}))
    assert [(e.meter, e.value, e.text_value) for e in armed] == [("armed", 1, "armed_away")]
    assert armed[0].ts == datetime(2026, 10, 1, 10, tzinfo=UTC)


def test_content_hash_identity_when_the_device_sends_no_id() -> None:
    ts = datetime(2026, 10, 1, tzinfo=UTC)
    assert content_event_id("d", "m", ts, Decimal("1.5")) == content_event_id("d", "m", ts, Decimal("1.5"))
    assert content_event_id("d", "m", ts, Decimal("1.5")) != content_event_id("d", "m", ts, Decimal("1.6"))


def test_gateway_batch_takes_device_id_from_each_record() -> None:
    events = PROFILES.decode(msg("gateways/g1/batch", {"readings": [
        {"meter": "a", "seq": 1, "ts": "2026-10-01T00:00:00Z", "energy_wh": 1000},
        {"meter": "b", "seq": 1, "ts": "2026-10-01T00:00:00Z", "energy_wh": 2000}]}))
    assert [(e.device_id, e.value) for e in events] == [("a", Decimal("1.000")), ("b", Decimal("2.000"))]


@pytest.mark.parametrize(("body", "reason"), [
    ({"seq": 1, "ts": "2026-10-01T00:00:00Z", "energy_wh": True}, "not a number"),
    ({"seq": 1, "ts": "2026-10-01T00:00:00Z", "energy_wh": "NaN"}, "not a number"),
    ({"seq": 1, "ts": 12, "energy_wh": 5}, "bad timestamp"),
    ({"seq": None, "ts": "2026-10-01T00:00:00Z", "energy_wh": 5}, "missing field"),
    ({"seq": 1, "ts": "2026-10-01T00:00:00Z"}, "no readings"),
    ([1, 2, 3], "missing field"),
])
def test_invalid_readings_have_reasons(body: object, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        PROFILES.decode(msg("meters/m1/reading", body))
    assert info.value.reason == reason


@pytest.mark.parametrize("device_id", ["a\x00b", "m1\n", "\nm1", "x" * 129, ""])
def test_device_id_with_control_characters_is_refused(device_id: str) -> None:
    good = {"meter": "m1", "seq": 1, "ts": "2026-10-01T00:00:00Z", "energy_wh": 1}
    PROFILES.decode(msg("gateways/g/batch", {"readings": [good]}))  # a good id first: ids that passed are kept
    with pytest.raises(DecodeError, match=r"bad device id|missing field"):
        PROFILES.decode(msg("gateways/g/batch", {"readings": [good, {**good, "meter": device_id}]}))


def test_readings_sharing_a_timestamp_text_and_the_next_text_each_get_their_own_time() -> None:
    def reading(meter: str, ts: object) -> dict[str, object]:
        return {"meter": meter, "seq": 1, "ts": ts, "energy_wh": 1}

    profiles = ProfileSet(load_profiles(SHIPPED_PROFILES))
    first, second = "2026-10-01T00:00:00Z", "2026-10-01T00:15:00+02:00"
    events = profiles.decode(msg("gateways/g/batch", {"readings": [reading("m1", first), reading("m2", first),
                                                                   reading("m3", second)]}))
    assert [e.ts for e in events] == [datetime(2026, 10, 1, tzinfo=UTC)] * 2 + [datetime(2026, 9, 30, 22, 15,
                                                                                          tzinfo=UTC)]
    for bad in ("2026-10-01T00:00:00", True):  # after a good text: no zone, and a boolean, are still refused
        with pytest.raises(DecodeError, match="timestamp"):
            profiles.decode(msg("gateways/g/batch", {"readings": [reading("m1", first), reading("m2", bad)]}))


def test_checked_ids_are_bounded_and_a_bad_one_is_refused_after_the_bound() -> None:
    ids = DeviceIds(limit=2)
    assert [ids.clean(i) for i in ("m1", "m2", "m3", "m1")] == ["m1", "m2", "m3", "m1"]  # m3 started it again
    with pytest.raises(DecodeError, match="bad device id"):
        ids.clean("m\n")
    with pytest.raises(DecodeError, match="bad device id"):
        ids.clean("x" * 129)


def test_a_profile_set_keeps_its_checked_ids_when_its_profiles_change() -> None:
    profiles = ProfileSet(load_profiles(SHIPPED_PROFILES))
    ids = profiles.ids
    profiles.replace(load_profiles(SHIPPED_PROFILES))
    assert profiles.ids is ids and all(c.ids is ids for c in profiles.compiled)
    assert ProfileSet(load_profiles(SHIPPED_PROFILES)).ids is not ids  # another set, its own


scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=20)
json_values = st.recursive(scalars,
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=300)
       | json_values.map(lambda v: orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS)),
       topic=st.sampled_from(["meters/x/reading", "security/x/event", "gateways/x/batch", "other"]))
def test_hostile_payloads_only_ever_raise_decode_error(payload: bytes, topic: str) -> None:
    try:
        events = PROFILES.decode(msg(topic, payload))
    except DecodeError:
        return
    for e in events:
        assert isinstance(e.value, Decimal) and e.ts.tzinfo is not None


@pytest.mark.parametrize(("raw", "refused"), [
    (str(10**20 - 1), False), (str(10**20), True), (str(-(10**20)), True), ("0E+30", False),
    ("1E+20", True), ("9.99999E+19", False), ("-0", False), (0, False)])
def test_an_implausibly_large_register_is_refused_at_ten_to_the_twentieth(raw: object, refused: bool) -> None:
    body = {"seq": 1, "ts": "2026-10-05T12:00:00+00:00", "energy_wh": raw}
    if refused:
        with pytest.raises(DecodeError, match="implausibly large"):
            PROFILES.decode(msg("meters/m1/reading", body))
        return
    events = PROFILES.decode(msg("meters/m1/reading", body))
    (energy,) = [e for e in events if e.meter == "energy"]
    assert energy.value == Decimal(str(raw)) * Decimal("0.001")


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_the_size_check_reads_the_exponent_as_abs_would(number: Decimal) -> None:
    assert (number.adjusted() >= 20 and bool(number)) == (abs(number) >= Decimal(10) ** 20)


def test_a_long_sequence_number_is_cut_to_64_characters_and_a_short_one_kept() -> None:
    for seq, expected in ((7, "7"), ("x" * 64, "x" * 64), ("y" * 100, "y" * 64)):
        events = PROFILES.decode(msg("meters/m1/reading", {"seq": seq, "ts": "2026-10-05T12:00:00+00:00",
                                                           "energy_wh": 5}))
        assert {e.event_id for e in events} == {expected}


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_a_decimal_that_is_no_finite_number_is_refused(value: Decimal) -> None:
    with pytest.raises(InvalidOperation, match="not a finite number"):
        to_decimal(value)
    assert to_decimal(Decimal("1.50")) == Decimal("1.50") and str(to_decimal(Decimal("1.50"))) == "1.50"
