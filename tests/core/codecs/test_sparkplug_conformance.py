"""Sparkplug B payloads against the spec's array examples (develop branch) and benthos-umh's vectors."""

from __future__ import annotations

import base64
import json
import re
from decimal import Decimal
from typing import Any

import pytest

from tests.core.codecs.conformance_dir import CONFORMANCE
from usagehub.core.codecs.sparkplug import Payload, decode_payload
from usagehub.core.codecs.sparkplug_values import DATATYPES, array, float32_decimal
from usagehub.errors import DecodeError

SPEC = json.loads(next((CONFORMANCE / "eclipse-sparkplug").rglob("*.EXTRACTED.json")).read_text())
BENTHOS = json.loads((CONFORMANCE / "benthos-umh/sparkplug_plugin/test_vectors.EXTRACTED.json").read_text())["vectors"]


def _bytes(text: str) -> bytes:
    # the spec writes 0xDX for a byte whose low nibble is padding
    return bytes(int(tok.replace("X", "0"), 16) for tok in re.findall(r"0x([0-9A-Fa-fX]{2})", text))


def _expected(datatype: str, text: str) -> list[Any]:
    items = [t.strip() for t in text.strip("[]").split(",")]
    if datatype == "BooleanArray":
        return [t == "true" for t in items]
    if datatype == "StringArray":
        return items
    if datatype in ("FloatArray", "DoubleArray"):
        return [Decimal(t) for t in items]
    return [int(t) for t in items]


@pytest.mark.parametrize("example", SPEC["develop"], ids=lambda e: e["datatype"])
def test_spec_array_examples(example: dict[str, Any]) -> None:
    assert DATATYPES[example["enum"]] == example["datatype"]
    got = array(example["enum"], _bytes(example["bytes_value"]))
    assert got == _expected(example["datatype"], example["input"])


@pytest.mark.parametrize("example", SPEC["develop"], ids=lambda e: e["datatype"])
def test_array_inside_a_metric(example: dict[str, Any]) -> None:
    payload = Payload(timestamp=1, seq=3)
    metric = payload.metrics.add()
    metric.name, metric.datatype, metric.bytes_value = "a", example["enum"], _bytes(example["bytes_value"])
    doc = decode_payload(payload.SerializeToString())
    assert doc["values"]["a"] == _expected(example["datatype"], example["input"])


def test_master_branch_examples_that_are_wrong_upstream_disagree() -> None:
    """On master, Int8/Float/Double/DateTime examples are wrong (sparkplug #435/#523); we follow develop."""
    wrong = {e["datatype"] for e in SPEC["master"]
             if e["bytes_value"] != next(d for d in SPEC["develop"] if d["enum"] == e["enum"])["bytes_value"]}
    assert "Int8Array" in wrong
    master_int8 = next(e for e in SPEC["master"] if e["datatype"] == "Int8Array")
    assert array(22, _bytes(master_int8["bytes_value"])) != [-23, 123]


@pytest.mark.parametrize("vector", BENTHOS, ids=lambda v: v["name"])
def test_benthos_vectors(vector: dict[str, Any]) -> None:
    doc = decode_payload(base64.b64decode(vector["base64"]))
    assert len(doc["metrics"]) == vector["metric_count"]
    assert bytes.fromhex(vector["hex"]) == base64.b64decode(vector["base64"])


def test_benthos_birth_values() -> None:
    birth = decode_payload(base64.b64decode(next(v for v in BENTHOS if v["name"] == "NBIRTH_V1")["base64"]))
    assert birth["values"] == {"bdSeq": 88, "Node Control/Rebirth": False, "Temperature": Decimal("21.5")}
    assert birth["seq"] == 0 and birth["timestamp"] > 1_700_000_000_000
    assert [m["alias"] for m in birth["metrics"]] == [1, 2, 100]
    data = decode_payload(base64.b64decode(next(v for v in BENTHOS if v["name"] == "NDATA_V1")["base64"]))
    assert data["values"] == {"alias:100": Decimal("22.5")}  # the adapter resolves aliases before this codec


def test_scalars_are_exact_and_signed() -> None:
    payload = Payload(timestamp=1)
    for name, datatype, field, value in (("i8", 1, "int_value", 0xFFFFFFFE), ("i64", 4, "long_value", 2**64 - 5),
                                         ("u32", 7, "int_value", 4_000_000_000), ("f", 9, "float_value", 1.23),
                                         ("d", 10, "double_value", 0.1), ("b", 11, "boolean_value", True),
                                         ("s", 12, "string_value", "x")):
        metric = payload.metrics.add()
        metric.name, metric.datatype = name, datatype
        setattr(metric, field, value)
    nul = payload.metrics.add()
    nul.name, nul.datatype, nul.is_null = "n", 10, True
    values = decode_payload(payload.SerializeToString())["values"]
    assert values == {"i8": -2, "i64": -5, "u32": 4_000_000_000, "f": Decimal("1.23"), "d": Decimal("0.1"),
                      "b": True, "s": "x"}
    assert float32_decimal(89.341) == Decimal("89.341")


@pytest.mark.parametrize("junk", [b"\xff\xff\xff", b"\x12\x05\x0a\x03ab", bytes(range(256))])
def test_junk_is_a_decode_error(junk: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_payload(junk)


@pytest.mark.parametrize("code, data", [(24, b"\x00\x00\x00"), (32, b"\x10\x00\x00\x00\x01"), (33, b"ab")])
def test_bad_arrays(code: int, data: bytes) -> None:
    with pytest.raises(DecodeError):
        array(code, data)
