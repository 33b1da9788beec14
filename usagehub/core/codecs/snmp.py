"""The ``snmp`` codec: decode what the snmp adapter produced (a poll, a walk row or a trap).

The adapter encodes one JSON object per message (schema version ``v: 1``)::

    {"v": 1, "kind": "poll" | "trap" | "rejected", "ts": "<ISO 8601, response or receive time>",
     "device_id": "...", "index": "<row index, walk rows only>",
     "uptime_ticks": 123, "boot": "b1716000000",
     "varbinds": {"1.3.6.1...": 42 | "text" | null},   # null: noSuchObject / noSuchInstance
     "types": {"1.3.6.1...": "Counter32"},
     "markers": {"1.3.6.1...": "b1716000000#0"},       # reset markers of cumulative OIDs
     "trap": "<snmpTrapOID.0>", "reason": "<why a trap was rejected>", ...}

The document puts every varbind at the top level under its numeric OID (walk
rows under the column OID, without the row index), because profile meters with
``oid:`` read ``document[oid]``; the other keys stay as they are, so profiles
reach ``$.ts``, ``$.boot``, ``$.trap`` and ``$.markers['<oid>']``. A ``rejected``
message (an unauthenticated or unknown trap) fails here with its reason, so it
lands in quarantine.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, field_validator

from usagehub.core.codecs import DecodeFn
from usagehub.errors import DecodeError

PAYLOAD_VERSION = 1
_OID = re.compile(r"^\d+(\.\d+){0,127}$")
_KINDS = frozenset({"poll", "trap", "rejected"})
_SCALAR_KEYS = ("ts", "device_id", "index", "boot", "trap", "source", "version", "security_name")
_MAX_VARBINDS = 4096


class SnmpOptions(BaseModel):
    """The profile's ``decode:`` block for SNMP devices."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["snmp"]
    # A TimeTicks OID (scalar or walk column, e.g. ifCounterDiscontinuityTime
    # 1.3.6.1.2.1.31.1.1.1.19) whose change marks a counter discontinuity.
    discontinuity_oid: str | None = None

    @field_validator("discontinuity_oid")
    @classmethod
    def _numeric(cls, value: str | None) -> str | None:
        if value is not None and not _OID.match(value.lstrip(".")):
            raise ValueError(f"discontinuity_oid {value!r} must be numeric, like 1.3.6.1.2.1.31.1.1.1.19")
        return value.lstrip(".") if value else value


def _mapping(payload: dict[str, Any], key: str, value_types: tuple[type, ...]) -> dict[str, Any]:
    found = payload.get(key, {})
    if not isinstance(found, dict) or len(found) > _MAX_VARBINDS:
        raise DecodeError("bad snmp payload", detail=f"{key} is not an object of at most {_MAX_VARBINDS}")
    for oid, value in found.items():
        if not _OID.match(oid):
            raise DecodeError("bad snmp payload", detail=f"{key}: {oid[:60]!r} is not a numeric OID")
        if not isinstance(value, value_types) or isinstance(value, bool):
            raise DecodeError("bad snmp payload", detail=f"{key}[{oid}]: {type(value).__name__}")
    return found


def _check_scalars(payload: dict[str, Any]) -> None:
    if not isinstance(payload.get("ts"), str):
        raise DecodeError("bad snmp payload", detail="ts is missing or not a string")
    for key in _SCALAR_KEYS:
        if key in payload and not isinstance(payload[key], str | None):
            raise DecodeError("bad snmp payload", detail=f"{key} is not a string")
    ticks = payload.get("uptime_ticks")
    if ticks is not None and (not isinstance(ticks, int) or isinstance(ticks, bool)):
        raise DecodeError("bad snmp payload", detail="uptime_ticks is not an integer")


def decode_snmp(payload: bytes) -> dict[str, Any]:
    """The document of one snmp adapter message; DecodeError on anything else."""
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        raise DecodeError("not an snmp adapter payload", detail=str(err)) from err
    version, kind = (parsed.get("v"), parsed.get("kind")) if isinstance(parsed, dict) else (None, None)
    valid_version = type(version) is int and version == PAYLOAD_VERSION  # True == 1, so no bools
    if not valid_version or not isinstance(kind, str) or kind not in _KINDS:
        raise DecodeError("not an snmp adapter payload", detail="expected an object with v=1 and a kind")
    if parsed["kind"] == "rejected":
        reason = parsed.get("reason")
        raise DecodeError("rejected snmp trap", detail=str(reason)[:200] if reason else None)
    _check_scalars(parsed)
    varbinds = _mapping(parsed, "varbinds", (int, str, type(None)))
    keys = (*_SCALAR_KEYS, "uptime_ticks", "inform")
    document: dict[str, Any] = {k: parsed[k] for k in keys if k in parsed}
    document["kind"] = parsed["kind"]
    document["markers"] = _mapping(parsed, "markers", (str,))
    document["types"] = _mapping(parsed, "types", (str,))
    document.update(varbinds)
    return document


class _SnmpCodec:
    name = "snmp"
    options_model: type[BaseModel] = SnmpOptions

    def compile(self, options: BaseModel) -> DecodeFn:
        return decode_snmp


CODEC = _SnmpCodec()


def encode_payload(message: dict[str, Any]) -> bytes:
    """The bytes of one adapter message (the inverse of :func:`decode_snmp` for valid input)."""
    return orjson.dumps({"v": PAYLOAD_VERSION, **message})
