"""Codec ``dlms_poll``: what the dlms adapter read from a DLMS/COSEM meter, as OBIS -> exact value.

The adapter (``usagehub/adapters/dlms``) encodes one JSON object per message::

    {"v": 1, "kind": "registers" | "profile", "ts": "<ISO 8601: meter clock, row capture time or poll time>",
     "clock": "<ISO 8601 meter clock or null>", "profile": "<load profile OBIS, profile rows only>",
     "objects": {"1.0.1.8.0.255": [raw, scaler, unit_code], ...}}

``raw`` is what the meter sent (an integer, a string or null), ``scaler`` and
``unit_code`` its register's attribute 3 (null for class 1 data). The document
puts each OBIS code at the top level with the scaler applied exactly
(``raw * 10**scaler`` as a Decimal), so profile meters read them with
``oid: "1.0.1.8.0.255"``; ``$.units['<obis>']`` holds the unit name, ``$.ts``
the reading's time. This module also holds the ``decode:`` options of a polled
DLMS profile, which the adapter reads to know what to ask the meter.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from usagehub.core.codecs import DecodeFn

if TYPE_CHECKING:
    from usagehub.core.profiles import Profile
from usagehub.errors import DecodeError

PAYLOAD_VERSION = 1
_OBIS_DOTTED = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")
_OBIS_IEC = re.compile(r"^(\d{1,3})-(\d{1,3}):(\d{1,3})\.(\d{1,3})\.(\d{1,3})\*(\d{1,3})$")
_MAX_OBJECTS = 1024
# IEC 62056-6-2 unit enumeration (the common ones); others appear as "unit-<code>".
UNITS: dict[int, str] = {
    1: "a", 2: "mo", 3: "wk", 4: "d", 5: "h", 6: "min", 7: "s", 8: "°", 9: "°C", 10: "currency",
    13: "m3", 14: "m3", 15: "m3/h", 16: "m3/h", 17: "m3/d", 18: "m3/d", 19: "l",
    20: "kg", 21: "N", 22: "Nm", 23: "Pa", 24: "bar", 25: "J", 26: "J/h",
    27: "W", 28: "VA", 29: "var", 30: "Wh", 31: "VAh", 32: "varh", 33: "A", 34: "C", 35: "V",
    44: "Hz", 45: "1/(Wh)", 46: "1/(varh)", 47: "1/(VAh)", 255: "count",
}


def normalize_obis(text: str) -> str:
    """``1-0:1.8.0*255`` or ``1.0.1.8.0.255`` -> ``1.0.1.8.0.255``; ValueError otherwise."""
    found = _OBIS_DOTTED.match(text.strip()) or _OBIS_IEC.match(text.strip())
    if found is None or any(int(g) > 255 for g in found.groups()):
        raise ValueError(f"{text!r} is not an OBIS code like 1.0.1.8.0.255 (or 1-0:1.8.0*255)")
    return ".".join(str(int(g)) for g in found.groups())


def _obis_or_none(text: str) -> str | None:
    try:
        return normalize_obis(text)
    except ValueError:
        return None


def unit_name(code: int | None) -> str | None:
    """The name of a DLMS unit code (None when the object has no unit)."""
    if code is None:
        return None
    return UNITS.get(code, f"unit-{code}")


class LoadProfileSpec(BaseModel):
    """A profile generic object (class 7) whose buffer is read by range since the last captured entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    obis: str
    first_read_s: float = Field(86_400, gt=0, description="how far back the first read of a new meter goes")
    max_rows: int = Field(10_000, gt=0, description="rows kept from one read; the rest wait for the next poll")

    _obis = field_validator("obis")(lambda v: normalize_obis(v))


class DlmsPollOptions(BaseModel):
    """The ``decode:`` block of a polled DLMS/COSEM profile (TCP wrapper or HDLC, port 4059)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["dlms_poll"]
    transport: Literal["wrapper", "hdlc"] = "wrapper"
    client_address: int = Field(16, ge=0, le=0x7F, description="16 = public client; 1 = management, …")
    server_address: int = Field(1, ge=0, le=0x3FFF, description="logical device (1 = management LD)")
    server_physical_address: int | None = Field(None, ge=0, le=0x3FFF, description="HDLC only")
    authentication: Literal["none", "lls", "hls_gmac"] = "none"
    ciphered: bool = False  # security suite 0 (AES-128-GCM) with the device's keys; hls_gmac implies it
    registers: list[str] = []           # class 3 (value, scaler_unit)
    extended_registers: list[str] = []  # class 4 (value, scaler_unit)
    data: list[str] = []                # class 1 (value only)
    clock: str | None = "0.0.1.0.0.255"  # class 8; its time stamps register readings
    load_profile: LoadProfileSpec | None = None
    max_pdu_size: int = Field(65535, ge=64, le=65535)
    # A meter whose date-times say "deviation not specified" keeps local time in this zone (IANA name);
    # times with a deviation are exact whatever this says.
    clock_zone: str = "UTC"

    @field_validator("clock_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"clock_zone {value!r} is not an IANA time zone like Europe/Berlin") from err
        return value

    @field_validator("registers", "extended_registers", "data")
    @classmethod
    def _obis_list(cls, value: list[str]) -> list[str]:
        return [normalize_obis(v) for v in value]

    @field_validator("clock")
    @classmethod
    def _clock(cls, value: str | None) -> str | None:
        return normalize_obis(value) if value else None

    @model_validator(mode="after")
    def _coherent(self) -> DlmsPollOptions:
        every = [*self.registers, *self.extended_registers, *self.data]
        if len(set(every)) != len(every):
            raise ValueError("an OBIS code is listed twice among registers, extended_registers and data")
        if not every and self.load_profile is None:
            raise ValueError("nothing to read: name registers, extended_registers, data or a load_profile")
        if self.transport == "wrapper" and self.server_physical_address is not None:
            raise ValueError("server_physical_address applies to transport hdlc only")
        return self

    @property
    def is_ciphered(self) -> bool:
        """Whether APDUs are protected with the device's keys (HLS-GMAC always is)."""
        return self.ciphered or self.authentication == "hls_gmac"

    def interface_of(self) -> dict[str, int]:
        """OBIS -> interface class of every object read one by one."""
        return {**{o: 3 for o in self.registers}, **{o: 4 for o in self.extended_registers},
                **{o: 1 for o in self.data}}


def scaled(raw: Any, scaler: Any) -> Any:
    """``raw * 10**scaler`` exactly for integers; other values as they are."""
    if isinstance(raw, bool) or not isinstance(raw, int):
        return raw
    if scaler is None or scaler == 0:
        return Decimal(raw)
    if isinstance(scaler, bool) or not isinstance(scaler, int) or not -128 <= scaler <= 127:
        raise DecodeError("bad dlms payload", detail=f"scaler {scaler!r}")
    return Decimal(raw).scaleb(scaler)


def _objects(payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    found = payload.get("objects")
    if not isinstance(found, dict) or len(found) > _MAX_OBJECTS:
        raise DecodeError("bad dlms payload", detail=f"objects is not an object of at most {_MAX_OBJECTS}")
    values: dict[str, Any] = {}
    units: dict[str, str] = {}
    for obis, item in found.items():
        if not _OBIS_DOTTED.match(obis):
            raise DecodeError("bad dlms payload", detail=f"{obis[:40]!r} is not an OBIS code")
        if not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], int | str | None):
            raise DecodeError("bad dlms payload", detail=f"objects[{obis}] is not [value, scaler, unit]")
        unit = item[2]
        if unit is not None and (isinstance(unit, bool) or not isinstance(unit, int)):
            raise DecodeError("bad dlms payload", detail=f"objects[{obis}] unit {unit!r}")
        values[obis] = scaled(item[0], item[1])
        if (name := unit_name(unit)) is not None:
            units[obis] = name
    return values, units


def decode_dlms_poll(payload: bytes) -> dict[str, Any]:
    """The document of one dlms adapter message; DecodeError on anything else."""
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        raise DecodeError("bad dlms payload", detail="not JSON") from err
    if not isinstance(parsed, dict) or parsed.get("v") != PAYLOAD_VERSION:
        raise DecodeError("bad dlms payload", detail="not a version 1 dlms document")
    if parsed.get("kind") not in ("registers", "profile") or not isinstance(parsed.get("ts"), str):
        raise DecodeError("bad dlms payload", detail="kind or ts missing")
    values, units = _objects(parsed)
    document: dict[str, Any] = {key: parsed.get(key) for key in ("kind", "ts", "clock", "profile")}
    document["units"] = units
    document.update(values)
    return document


def encode_payload(body: dict[str, Any]) -> bytes:
    """The JSON payload the adapter sends (``v`` added)."""
    return orjson.dumps({"v": PAYLOAD_VERSION, **body})


class _DlmsPollCodec:
    name = "dlms_poll"
    options_model: type[BaseModel] = DlmsPollOptions

    def check_profile(self, profile: Profile) -> list[tuple[tuple[str, ...], str]]:
        """Meters whose OBIS code the profile never reads (without a load profile, whose columns the meter
        names only at run time): (location, message) for each."""
        options = DlmsPollOptions.model_validate(profile.decode)
        if options.load_profile is not None:
            return []
        read = options.interface_of()
        return [(("meters", name, "oid"), f"{spec.oid} is not read: list it under decode.registers, "
                 "extended_registers or data")
                for name, spec in profile.meters.items()
                if spec.oid is not None and _obis_or_none(spec.oid) not in read]

    def compile(self, options: BaseModel) -> DecodeFn:
        """The decoder (the options tell the adapter what to read; decoding needs none)."""
        return decode_dlms_poll


CODEC = _DlmsPollCodec()
