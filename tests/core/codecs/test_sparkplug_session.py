"""Sparkplug B host session rules: births teach aliases, seq gaps and unknown aliases ask for a rebirth,
deaths end sessions (only with the session's bdSeq), and the state survives a restart."""

from __future__ import annotations

import base64
import json
from decimal import Decimal

import pytest

from tests.core.codecs.conformance_dir import CONFORMANCE
from usagehub.core.codecs.sparkplug import Payload, decode_payload
from usagehub.core.codecs.sparkplug_session import (
    REBIRTH_METRIC,
    SparkplugSessions,
    parse_topic,
    rebirth_command,
)
from usagehub.errors import DecodeError

_VECTORS = json.loads((CONFORMANCE / "benthos-umh/sparkplug_plugin/test_vectors.EXTRACTED.json").read_text())
V = {v["name"]: base64.b64decode(v["base64"]) for v in _VECTORS["vectors"]}
NODE = parse_topic("spBv1.0/plant/NBIRTH/edge1")
NDATA = parse_topic("spBv1.0/plant/NDATA/edge1")
NDEATH = parse_topic("spBv1.0/plant/NDEATH/edge1")
T = 1_700_000_000_000


def _payload(seq: int, *metrics: tuple[str | None, int | None, float], bd_seq: int | None = None) -> bytes:
    payload = Payload(timestamp=T, seq=seq)
    if bd_seq is not None:
        m = payload.metrics.add()
        m.name, m.datatype, m.long_value = "bdSeq", 8, bd_seq
    for name, alias, value in metrics:
        m = payload.metrics.add()
        if name is not None:
            m.name = name
        if alias is not None:
            m.alias = alias
        m.datatype, m.double_value = 10, value
    return bytes(payload.SerializeToString())


def _born() -> SparkplugSessions:
    sessions = SparkplugSessions()
    assert sessions.receive(NODE, V["NBIRTH_V1"], T).payload is not None
    return sessions


def test_topics() -> None:
    assert parse_topic("spBv1.0/g/DDATA/e/meter-7").device == "meter-7"
    for bad in ("spBv1.0/STATE/host", "spAv1.0/g/NDATA/e", "spBv1.0/g/NDATA/e/dev", "spBv1.0/g/DDATA/e",
                "spBv1.0//NDATA/e", "spBv1.0/g/XDATA/e"):
        with pytest.raises(DecodeError):
            parse_topic(bad)


def test_alias_from_birth_is_resolved_in_data() -> None:
    sessions = _born()
    verdict = sessions.receive(NDATA, V["NDATA_V1"], T + 1)
    assert verdict.payload is not None and not verdict.rebirth
    assert decode_payload(verdict.payload)["values"] == {"Temperature": Decimal("22.5")}


def test_seq_gap_asks_for_a_rebirth_once_per_interval() -> None:
    sessions = _born()
    assert sessions.receive(NDATA, V["NDATA_V1"], T).payload
    gap = sessions.receive(NDATA, V["NDATA_GAP"], T + 10)
    assert gap.rebirth and "seq gap" in (gap.reason or "")
    assert gap.payload is not None and decode_payload(gap.payload)["values"] == {"Temperature": Decimal(27)}
    # 7 after 5 is a gap too, but a request is still fresh
    assert not sessions.receive(NDATA, _payload(7, ("Temperature", None, 1.0)), T + 20).rebirth
    assert sessions.receive(NDATA, _payload(9, ("Temperature", None, 1.0)), T + 6_000).rebirth


def test_seq_wraps_after_255() -> None:
    sessions = _born()
    for seq in range(1, 256):
        assert sessions.receive(NDATA, _payload(seq, (None, 100, float(seq))), T).payload is not None
    verdict = sessions.receive(NDATA, V["NDATA_WRAPAROUND"], T)
    assert verdict.payload is not None and decode_payload(verdict.payload)["values"]["Temperature"] == Decimal(30)


def test_data_before_birth_and_unknown_alias_ask_for_rebirth() -> None:
    fresh = SparkplugSessions()
    before = fresh.receive(NDATA, V["NDATA_BEFORE_BIRTH"], T)
    assert before.rebirth and before.payload is not None  # forwarded: the pipeline quarantines "alias:100"
    assert decode_payload(before.payload)["values"] == {"alias:100": Decimal(25)}
    sessions = _born()
    unknown = sessions.receive(NDATA, _payload(1, (None, 999, 1.0), (None, 100, 2.0)), T)
    assert unknown.rebirth and "unknown alias 999" in (unknown.reason or "")
    assert unknown.payload is not None
    assert decode_payload(unknown.payload)["values"] == {"alias:999": Decimal(1), "Temperature": Decimal(2)}


def test_death_ends_the_session_only_with_its_bdseq() -> None:
    sessions = _born()
    stale = sessions.receive(NDEATH, V["NDEATH_V1"], T)  # bdSeq 0, the session's is 88 (benthos caveat)
    assert "stale" in (stale.reason or "") and sessions.receive(NDATA, V["NDATA_V1"], T).payload is not None
    death = sessions.receive(NDEATH, _payload(0, bd_seq=88), T)
    assert death.reason == "node death" and death.payload is None
    after = sessions.receive(NDATA, _payload(2, (None, 100, 1.0)), T)
    assert after.rebirth and "not online" in (after.reason or "")


def test_devices_birth_data_death() -> None:
    sessions = _born()
    dbirth = parse_topic("spBv1.0/plant/DBIRTH/edge1/meter-1")
    ddata = parse_topic("spBv1.0/plant/DDATA/edge1/meter-1")
    assert sessions.receive(ddata, _payload(1, (None, 5, 1.0)), T).rebirth  # no DBIRTH yet
    sessions = _born()
    assert sessions.receive(dbirth, _payload(1, ("Energy", 5, 10.0)), T).payload is not None
    resolved = sessions.receive(ddata, _payload(2, (None, 5, 12.5)), T).payload
    assert resolved is not None and decode_payload(resolved)["values"] == {"Energy": Decimal("12.5")}
    ddeath = sessions.receive(parse_topic("spBv1.0/plant/DDEATH/edge1/meter-1"), _payload(3), T)
    assert ddeath.reason == "device death" and ddeath.payload is None
    assert sessions.receive(ddata, _payload(4, (None, 5, 13.0)), T).rebirth


def test_state_survives_a_restart() -> None:
    sessions = _born()
    sessions.receive(NDATA, V["NDATA_V1"], T)
    restored = SparkplugSessions.from_json(json.loads(json.dumps(sessions.to_json())))
    verdict = restored.receive(NDATA, _payload(2, (None, 100, 23.0)), T)
    assert verdict.payload is not None and decode_payload(verdict.payload)["values"] == {"Temperature": Decimal(23)}
    assert SparkplugSessions.from_json({"g/e": {"online": True}}).nodes == {}  # malformed entries are skipped


def test_rebirth_command() -> None:
    doc = decode_payload(rebirth_command(T))
    assert doc["values"] == {REBIRTH_METRIC: True} and doc["timestamp"] == T
