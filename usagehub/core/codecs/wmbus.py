"""Codec ``wmbus``: wireless M-Bus / OMS telegrams (EN 13757-4, OMS Vol. 2) to a document of records.

Layers in order: DLL (frame format A or B, CRCs checked and removed), an
optional ELL (AES-CTR), an optional AFL (mode 7 MAC), the TPL header with its
security mode (0 clear, 5 AES-CBC, 7 AES-CBC with derived keys), then the
application layer, decoded by the wired M-Bus record parser. Keys come from a
lookup by meter id that the runtime fills from the encrypted key store; a
telegram whose header says "encrypted" but whose payload is already clear (a
gateway decrypted it) is accepted only when the profile sets
``payload_already_clear``.
"""

from __future__ import annotations

import binascii
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from usagehub.core.codecs import DecodeFn, KeyLookup
from usagehub.core.codecs.mbus import with_current
from usagehub.core.codecs.mbus_records import parse_records
from usagehub.core.codecs.mbus_tables import medium_name
from usagehub.core.codecs.wmbus_layers import Afl, Ell, Tpl, parse_afl, parse_ell, parse_tpl
from usagehub.core.codecs.wmbus_link import LinkHeader, bcd_id, link_header, manufacturer_code, strip_dll_crcs
from usagehub.core.codecs.wmbus_security import (
    check_ell_crc,
    decrypt_ell,
    decrypt_mode5,
    decrypt_mode7,
    mode7_keys,
    verify_mac,
)
from usagehub.errors import DecodeError

_ELL = frozenset({0x8C, 0x8D, 0x8E, 0x8F})
_TPL = frozenset({0x72, 0x78, 0x7A})
_MAX_LAYERS = 4


class WmbusOptions(BaseModel):
    """The ``decode:`` block of a ``wmbus`` profile."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["wmbus"]
    encoding: Literal["binary", "hex"] = "binary"
    frame_format: Literal["auto", "A", "B", "none"] = "auto"
    payload_already_clear: bool = False
    framing: dict[str, Any] | None = None


def _no_keys(_meter_id: str) -> bytes | None:
    return None


class _State:
    """What the layers tell each other while a telegram is peeled."""

    __slots__ = ("afl", "data", "ell", "link", "security")

    def __init__(self, data: bytes, link: LinkHeader) -> None:
        self.data, self.link = data, link
        self.ell: Ell | None = None
        self.afl: Afl | None = None
        self.security: list[str] = []


class WmbusDecoder:
    """One profile's telegram decoder: its options and the key lookup."""

    def __init__(self, options: WmbusOptions, keys: KeyLookup | None = None) -> None:
        self.options, self.keys = options, keys or _no_keys

    def __call__(self, payload: bytes) -> dict[str, Any]:
        """Decode one telegram; DecodeError on anything that does not check out."""
        raw = self._bytes(payload)
        telegram, frame_format = strip_dll_crcs(raw, self.options.frame_format)
        state = _State(telegram, link_header(telegram))
        pos = 10
        for _ in range(_MAX_LAYERS):
            ci = take_ci(state.data, pos)
            if ci in _ELL:
                pos = self._ell(state, pos)
            elif ci == 0x90:
                state.afl, pos = parse_afl(state.data, pos)
                if state.afl.more_fragments:
                    raise DecodeError("fragmented wM-Bus message", detail="AFL fragments are not reassembled")
            elif ci in _TPL:
                return self._application(state, parse_tpl(state.data, pos), pos, frame_format)
            elif ci == 0x79:
                raise DecodeError("wM-Bus compact frame", detail="needs the full frame of its format signature")
            else:
                raise DecodeError("unsupported wM-Bus CI field", detail=f"0x{ci:02X} at offset {pos}")
        raise DecodeError("too many wM-Bus layers", detail=f"more than {_MAX_LAYERS}")

    def _bytes(self, payload: bytes) -> bytes:
        if self.options.encoding == "binary":
            return payload
        try:
            return binascii.unhexlify(b"".join(payload.split()))
        except (binascii.Error, ValueError) as err:
            raise DecodeError("not a hex telegram", detail=payload[:40].decode("latin-1")) from err

    def _ell(self, state: _State, pos: int) -> int:
        ell, pos = parse_ell(state.data, pos)
        state.ell = ell
        if not ell.encrypted or ell.session is None:
            return pos
        meter_id = bcd_id((ell.address or state.link.address)[2:6])
        key = self.keys(meter_id)
        rest = state.data[pos:]
        if key is not None:
            plain = decrypt_ell(key, ell.address or state.link.address, ell.cc, ell.session, rest)
            state.security.append("ell-ctr")
        elif self.options.payload_already_clear:
            plain = check_ell_crc(rest)
            state.security.append("ell-clear")
        else:
            raise DecodeError("no key for wM-Bus meter", detail=f"{meter_id} (ELL AES-CTR)")
        state.data = state.data[:pos] + plain
        return pos

    def _application(self, state: _State, tpl: Tpl, tpl_at: int, frame_format: str) -> dict[str, Any]:
        address = tpl.address or (state.ell.address if state.ell and state.ell.address else state.link.address)
        meter_id = bcd_id(address[2:6])
        payload = state.data[tpl.payload_at :]
        if tpl.mode == 5:
            secured, tail = self._mode5(meter_id, address, tpl, payload)
        elif tpl.mode == 7:
            secured, tail = self._mode7(state, meter_id, address, tpl_at, tpl, payload)
        elif tpl.mode != 0:
            raise DecodeError("unsupported wM-Bus security mode", detail=str(tpl.mode))
        else:
            secured, tail = payload, b""
        if tpl.mode:
            state.security.append(f"mode{tpl.mode}" if self.keys(meter_id) else f"mode{tpl.mode}-already-clear")
        records = parse_records(secured, 0)
        document = self._document(state, tpl, address, frame_format, records)
        if tail:
            # Records after the encrypted blocks are neither secret nor authenticated: a tail that does
            # not parse is reported beside the records the key vouched for, instead of losing them.
            try:
                records.extend(parse_records(tail, 0))
            except DecodeError as err:
                document["unparsed_tail"] = {"hex": tail.hex().upper(), "reason": f"{err.reason}: {err.detail}"}
            document.update(with_current(records))
        document["meter_time"] = meter_time(records)
        return document

    def _mode5(self, meter_id: str, address: bytes, tpl: Tpl, payload: bytes) -> tuple[bytes, bytes]:
        key = self.keys(meter_id)
        if key is None:
            return self._clear_or_refuse(meter_id, payload, 5)
        return decrypt_mode5(key, address, tpl.access or 0, payload, tpl.blocks)

    def _mode7(self, state: _State, meter_id: str, address: bytes, tpl_at: int, tpl: Tpl,
               payload: bytes) -> tuple[bytes, bytes]:
        key = self.keys(meter_id)
        if key is None:
            return self._clear_or_refuse(meter_id, payload, 7)
        afl = state.afl
        if afl is None or afl.counter is None:
            raise DecodeError("wM-Bus mode 7 without AFL message counter")
        enc_key, mac_key = mode7_keys(key, afl.counter, address[2:6])
        if afl.mac is not None:
            head = bytes([afl.mcl or 0]) + afl.counter + (afl.length_field or b"")
            verify_mac(mac_key, head + state.data[tpl_at:], afl.mac)
            state.security.append("mac")
        return decrypt_mode7(enc_key, payload, tpl.blocks)

    def _clear_or_refuse(self, meter_id: str, payload: bytes, mode: int) -> tuple[bytes, bytes]:
        if self.options.payload_already_clear and payload[:2] == b"\x2f\x2f":
            return payload, b""
        raise DecodeError("no key for wM-Bus meter", detail=f"{meter_id} (security mode {mode})")

    def _document(self, state: _State, tpl: Tpl, address: bytes, frame_format: str,
                  records: list[dict[str, Any]]) -> dict[str, Any]:
        link = state.link
        access = tpl.access if tpl.access is not None else (state.ell.access if state.ell else None)
        return {
            "id": bcd_id(address[2:6]),
            "manufacturer": manufacturer_code(address[0:2]),
            "version": address[6],
            "medium": medium_name(address[7]),
            "medium_code": address[7],
            "access_number": access,
            "status": tpl.status,
            "security_mode": tpl.mode,
            "message_counter": int.from_bytes(state.afl.counter, "little") if state.afl and state.afl.counter else None,
            "frame_format": frame_format,
            "link": {"id": link.id, "manufacturer": link.manufacturer, "version": link.version,
                     "medium": medium_name(link.device_type), "control": link.control},
            "security": "+".join(state.security),
            **with_current(records),
        }


def meter_time(records: list[dict[str, Any]]) -> str | None:
    """The meter's current date and time (the first storage-0 type F/I record), ISO 8601; None if unset."""
    for record in records:
        vif, value = record.get("vif"), record["value"]
        if (vif is not None and vif & 0x7F == 0x6D and record["storage"] == 0 and isinstance(value, str)
                and not value.startswith("1900")):
            return value
    return None


def take_ci(data: bytes, pos: int) -> int:
    """The CI byte at ``pos``."""
    if pos >= len(data):
        raise DecodeError("wM-Bus telegram without application data", detail=f"ends at offset {pos}")
    return data[pos]


class _WmbusCodec:
    name = "wmbus"
    options_model: type[BaseModel] = WmbusOptions

    def compile(self, options: BaseModel) -> DecodeFn:
        """A decoder without keys: clear telegrams (and pre-decrypted ones if the profile allows)."""
        return self.compile_with_keys(options, None)

    def compile_with_keys(self, options: BaseModel, keys: KeyLookup | None) -> DecodeFn:
        """A decoder that finds each meter's AES key through ``keys`` (meter id -> 16 bytes)."""
        assert isinstance(options, WmbusOptions)
        return WmbusDecoder(options, keys)


CODEC = _WmbusCodec()
