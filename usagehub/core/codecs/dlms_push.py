"""Codec ``dlms_push``: DLMS/COSEM data-notification pushes (HDLC, GBT, general-glo-ciphering) to OBIS values.

The A-XDR data and the data-notification come from the ``dlms-cosem`` library
(MIT); HDLC and block transfer are in :mod:`dlms_hdlc`. A push whose body is the
usual "push object list + values" structure (Landis+Gyr, Iskra) becomes
``values`` keyed by OBIS code, with attribute-3 scalers applied exactly.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from dlms_cosem.time import datetime_from_bytes
from dlms_cosem.utils import parse_as_dlms_data
from pydantic import BaseModel, ConfigDict

from usagehub.core.codecs import DecodeFn, KeyLookup
from usagehub.core.codecs.dlms_hdlc import ber_length, join_apdu
from usagehub.errors import DecodeError

_TAG = 12


class DlmsPushOptions(BaseModel):
    """The ``decode:`` block of a ``dlms_push`` profile."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["dlms_push"]
    framing: dict[str, Any] | None = None
    require_authentication: bool = True  # refuse ciphered pushes whose GCM tag cannot be checked


def _to_python(item: Any) -> Any:
    value = getattr(item, "value", item)
    if isinstance(value, list):
        return [_to_python(v) for v in value]
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
        if len(raw) == 6:
            return ".".join(str(b) for b in raw)  # a logical name (OBIS)
        if raw and all(32 <= b < 127 for b in raw):
            return raw.decode("ascii")
        return raw.hex().upper()
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, float):
        return Decimal(repr(value))
    return value


def parse_data(data: bytes) -> list[Any]:
    """A-XDR data items as Python values (lists, int, Decimal, str)."""
    try:
        parsed = parse_as_dlms_data(data)
        # one top-level octet string comes back as its bytes, anything else as a list of items
        return [_to_python(item) for item in parsed] if isinstance(parsed, list) else [_to_python(parsed)]
    except (ValueError, KeyError, IndexError, TypeError, NotImplementedError, AttributeError) as err:
        raise DecodeError("bad A-XDR data", detail=str(err)[:120]) from err


def _notification(apdu: bytes) -> dict[str, Any]:
    if len(apdu) < 6 or apdu[0] != 0x0F:
        raise DecodeError("not a data-notification", detail=apdu[:1].hex())
    pos = 5
    when = None
    if apdu[pos] == 0x0C and len(apdu) >= pos + 13:
        try:
            when = datetime_from_bytes(apdu[pos + 1 : pos + 13])[0].isoformat()
        except (ValueError, IndexError, TypeError):
            when = apdu[pos + 1 : pos + 13].hex().upper()
        pos += 13
    elif apdu[pos] == 0x00:
        pos += 1
    body = parse_data(apdu[pos:])
    return {"invoke_id": int.from_bytes(apdu[1:5], "big") & 0xFFFFFF, "datetime": when,
            "body": body[0] if len(body) == 1 else body}


def decipher(apdu: bytes, key: bytes, auth_key: bytes | None, require_authentication: bool) -> tuple[bytes, str]:
    """The plain APDU inside general-glo-ciphering (``DB``), AES-128-GCM, and how it was checked."""
    if len(apdu) < 12 or apdu[1] != 8:
        raise DecodeError("bad general-glo-ciphering header")
    system_title = apdu[2:10]
    length, pos = ber_length(apdu, 10)
    body = apdu[pos : pos + length]
    if len(body) != length or length < 5:
        raise DecodeError("general-glo-ciphering truncated")
    control, counter, text = body[0], body[1:5], body[5:]
    if not control & 0x20:
        raise DecodeError("DLMS authentication-only push", detail="not supported yet")
    iv = system_title + counter
    if control & 0x10:
        if auth_key is not None:
            try:
                decryptor = Cipher(algorithms.AES(key), modes.GCM(iv, text[-_TAG:], min_tag_length=_TAG)).decryptor()
                decryptor.authenticate_additional_data(bytes([control]) + auth_key)
                return decryptor.update(text[:-_TAG]) + decryptor.finalize(), "gcm"
            except InvalidTag as err:
                raise DecodeError("DLMS decryption failed", detail="GCM tag does not verify") from err
        if require_authentication:
            raise DecodeError("DLMS push needs the authentication key", detail="GCM tag cannot be checked")
        text = text[:-_TAG]
    # GCM without its tag is AES-CTR from counter 2 (J0 = IV || 00000001)
    stream = Cipher(algorithms.AES(key), modes.CTR(iv + b"\x00\x00\x00\x02")).decryptor()
    checked = "tag not checked" if control & 0x10 else "encryption only"
    return stream.update(text) + stream.finalize(), f"gcm ({checked})"


_OBIS = re.compile(r"^\d{1,3}(\.\d{1,3}){5}$")


def _is_obis(value: Any) -> bool:
    return isinstance(value, str) and bool(_OBIS.match(value))


def _pairs(body: Any) -> list[tuple[int | None, str, int, Any]] | None:
    """(class, OBIS, attribute, value) of the two push layouts seen in the field, else None."""
    if not isinstance(body, list) or not body:
        return None
    head = body[0]
    if (isinstance(head, list) and len(head) == len(body)
            and all(isinstance(d, list) and len(d) == 4 and _is_obis(d[1]) for d in head)):
        # "push object list + values" (Landis+Gyr, Iskra): the list describes every element, itself included
        return [(d[0], d[1], d[2], value) for d, value in zip(head, body, strict=True)]
    if all(isinstance(item, list) and 2 <= len(item) <= 3 and _is_obis(item[0]) for item in body):
        # structures {OBIS, value[, scaler_unit]} (the Kaifa/Kamstrup-style push in dlms-cosem's tests)
        out: list[tuple[int | None, str, int, Any]] = []
        for item in body:
            out.append((None, item[0], 2, item[1]))
            if len(item) == 3:
                out.append((None, item[0], 3, item[2]))
        return out
    flat = body[1:] if len(body) % 2 else body  # a leading clock, then OBIS, value, OBIS, value …
    if flat and all(_is_obis(o) for o in flat[0::2]):
        return [(None, str(o), 2, v) for o, v in zip(flat[0::2], flat[1::2], strict=True)]
    return None


def push_values(body: Any) -> tuple[dict[str, Any], str | None]:
    """OBIS -> value of a push body (attribute 2 values, attribute-3 scalers applied) and the device name."""
    values: dict[str, Any] = {}
    scalers: dict[str, int] = {}
    for class_id, obis, attribute, value in _pairs(body) or []:
        if class_id == 40:
            continue  # the push setup object: its value is the object list itself
        if attribute == 3 and isinstance(value, list) and len(value) == 2 and isinstance(value[0], int):
            scalers[obis] = value[0]
        elif attribute == 2:
            values[obis] = value
    for obis, scaler in scalers.items():
        if isinstance(values.get(obis), int) and not isinstance(values[obis], bool):
            values[obis] = Decimal(values[obis]).scaleb(scaler)
    device = next((values[o] for o in ("0.0.42.0.0.255", "0.0.96.1.0.255") if isinstance(values.get(o), str)), None)
    return values, device


class DlmsPushDecoder:
    """One profile's push decoder, with per-meter keys by system title (hex)."""

    def __init__(self, options: DlmsPushOptions, keys: KeyLookup | None = None) -> None:
        self.options, self.keys = options, keys

    def __call__(self, payload: bytes) -> dict[str, Any]:
        """Decode the HDLC frames of one push."""
        apdu = join_apdu(payload)
        security, system_title = "none", None
        if apdu[:1] == b"\xdb":
            system_title = apdu[2:10].hex().upper()
            key = self.keys(system_title) if self.keys else None
            if key is None:
                raise DecodeError("no key for DLMS meter", detail=f"system title {system_title}")
            auth = self.keys(f"{system_title}:auth") if self.keys else None
            apdu, security = decipher(apdu, key, auth, self.options.require_authentication)
        document = _notification(apdu)
        values, device = push_values(document["body"])
        return {**document, "security": security, "system_title": system_title, "values": values, "device": device}


class _DlmsPushCodec:
    name = "dlms_push"
    options_model: type[BaseModel] = DlmsPushOptions

    def compile(self, options: BaseModel) -> DecodeFn:
        """A decoder for clear pushes only."""
        return self.compile_with_keys(options, None)

    def compile_with_keys(self, options: BaseModel, keys: KeyLookup | None) -> DecodeFn:
        """A decoder that finds block-cipher keys by system title (``<title>:auth`` for the GCM key)."""
        assert isinstance(options, DlmsPushOptions)
        return DlmsPushDecoder(options, keys)


CODEC = _DlmsPushCodec()
