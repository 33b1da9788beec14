"""Codec ``dc09``: SIA DC-09 frames (LF CRC 0LLL "ID"seq Rrcvr Lpref #acct [data] _timestamp CR).

The decoder checks CRC-16/ARC and the length strictly, decrypts ``*``-marked
messages (AES-CBC, zero IV, per-account key) and parses SIA-DCS or ADM-CID
bodies. Reply builders for ACK, NAK and DUH take the time as an argument,
because core never reads a clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pydantic import BaseModel, ConfigDict, field_validator

from usagehub.core.codecs import DecodeFn
from usagehub.core.codecs.checksums import crc16_arc
from usagehub.core.codecs.dc09_body import data_account, parse_adm_cid, parse_sia_dcs
from usagehub.errors import DecodeError

_HEAD = re.compile(r'^(?P<crc>[0-9A-Fa-f]{4})(?P<len>[0-9A-Fa-f]{4})(?P<body>".*)$', re.S)
_BODY = re.compile(
    r'^"(?P<enc>\*)?(?P<id>[A-Z0-9-]+)"(?P<seq>\d{4})(?:R(?P<rcvr>[0-9A-Fa-f]{1,6}))?'
    r"L(?P<line>[0-9A-Fa-f]{1,6})(?:#(?P<acct>[0-9A-Fa-f]{3,16}))?\[(?P<rest>.*)$",
    re.S,
)
_TIMESTAMP = re.compile(r"_(\d{2}):(\d{2}):(\d{2}),(\d{2})-(\d{2})-(\d{4})$")
_OH = re.compile(r"^SR(?P<rcvr>\d{4})L(?P<line>\d{4})\s+(?P<acct>\S+)\s+\[ID(?P<id>\w+)\]$")
SUPPORTED = ("SIA-DCS", "ADM-CID", "NULL")


class Dc09Error(DecodeError):
    """A DC-09 frame was refused; ``reply`` says what the receiver answers (NAK or DUH)."""

    def __init__(
        self, reason: str, *, detail: str | None = None, reply: Literal["NAK", "DUH"] = "NAK"
    ) -> None:
        super().__init__(reason, detail=detail)
        self.reply = reply


class Dc09Options(BaseModel):
    """The ``decode:`` block of a ``dc09`` profile."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["dc09"]
    keys: dict[str, str] = {}
    strict: bool = True
    require_timestamp: bool = True
    framing: dict[str, Any] | None = None

    @field_validator("keys")
    @classmethod
    def _key_sizes(cls, value: dict[str, str]) -> dict[str, str]:
        for account, key in value.items():
            key_bytes(key, account)
        return value


def key_bytes(key: str, account: str = "?") -> bytes:
    """An AES key written as ASCII (16/24/32 chars) or as ``hex:`` + 32/48/64 hex digits."""
    raw = bytes.fromhex(key[4:]) if key.startswith("hex:") else key.encode()
    if len(raw) not in (16, 24, 32):
        raise ValueError(f"key of account {account} must be 16, 24 or 32 bytes (AES-128/192/256)")
    return raw


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """The routing part of a DC-09 frame, enough to build a reply."""

    message_id: str
    encrypted: bool
    seq: str
    receiver: str | None
    line: str
    account: str | None
    rest: str


def unframe(frame: bytes) -> str:
    """The frame text without its LF/CR delimiters."""
    try:
        text = frame.decode("ascii")
    except UnicodeDecodeError as err:
        raise Dc09Error("not ASCII", detail=str(err)[:80]) from err
    return text.strip("\n\r")


def verify(text: str, *, strict: bool = True) -> Frame:
    """Check CRC and length (when ``strict``) and split the routing fields."""
    head = _HEAD.match(text)
    if head is None:
        raise Dc09Error("not a DC-09 frame", detail=text[:40])
    body = head["body"]
    if strict:
        crc = crc16_arc(body.encode("ascii"))
        if int(head["crc"], 16) != crc:
            raise Dc09Error("bad CRC", detail=f"{head['crc']} != {crc:04X}")
        if int(head["len"], 16) != len(body):
            raise Dc09Error("bad length", detail=f"{head['len']} != {len(body):04X}")
    m = _BODY.match(body)
    if m is None:
        raise Dc09Error("bad DC-09 header", detail=body[:40])
    return Frame(
        message_id=m["id"],
        encrypted=bool(m["enc"]),
        seq=m["seq"],
        receiver=m["rcvr"],
        line=m["line"],
        account=m["acct"],
        rest=m["rest"],
    )


def _aes(key: bytes) -> Cipher[modes.CBC]:
    return Cipher(algorithms.AES(key), modes.CBC(bytes(16)))


def decrypt(rest: str, key: bytes) -> str:
    """Decrypt the hex text after ``[`` and drop the leading pad (up to the first ``|``)."""
    hex_text = rest.rstrip("]")
    try:
        cipher_bytes = bytes.fromhex(hex_text)
    except ValueError as err:
        raise Dc09Error("encrypted part is not hex", detail=hex_text[:40]) from err
    if not cipher_bytes or len(cipher_bytes) % 16:
        raise Dc09Error("encrypted part is not whole AES blocks", detail=f"{len(cipher_bytes)} bytes")
    decryptor = _aes(key).decryptor()
    plain = (decryptor.update(cipher_bytes) + decryptor.finalize()).decode("latin-1")
    if "|" in plain:
        return plain.partition("|")[2]
    return plain[plain.index("]") :] if "]" in plain else plain


def parse_timestamp(text: str) -> tuple[str, str | None]:
    """Split ``…_HH:MM:SS,MM-DD-YYYY`` into what precedes it and an ISO UTC timestamp."""
    m = _TIMESTAMP.search(text)
    if m is None:
        return text, None
    hh, mi, ss, mo, dd, yyyy = (int(g) for g in m.groups())
    try:
        stamp = datetime(yyyy, mo, dd, hh, mi, ss, tzinfo=UTC).isoformat()
    except ValueError as err:
        raise Dc09Error("bad timestamp", detail=m.group(0)) from err
    return text[: m.start()], stamp


def _blocks(text: str) -> tuple[str, dict[str, str]]:
    """The data block (up to its ``]``) and extended ``[X…]`` blocks keyed by their letter."""
    data, sep, tail = text.partition("]")
    if not sep:
        raise Dc09Error("unterminated data block", detail=text[:40])
    extended: dict[str, str] = {}
    for block in re.findall(r"\[([^\]]*)\]", tail):
        if block:
            extended[block[0]] = block[1:]
    return data, extended


class _Decoder:
    """A DC-09 decoder bound to one profile's keys and strictness."""

    def __init__(self, options: Dc09Options) -> None:
        self.keys = {acct.upper(): key_bytes(key, acct) for acct, key in options.keys.items()}
        self.strict, self.require_timestamp = options.strict, options.require_timestamp

    def __call__(self, payload: bytes) -> dict[str, Any]:
        text = unframe(payload)
        if not self.strict and (oh := _OH.match(text)):
            return _oh_document(oh)
        frame = verify(text, strict=self.strict)
        rest = frame.rest
        if frame.encrypted:
            key = self.keys.get((frame.account or "").upper())
            if key is None:
                raise Dc09Error("no key for account", detail=str(frame.account), reply="DUH")
            rest = decrypt(rest, key)
        rest, timestamp = parse_timestamp(rest)
        if timestamp is None and self.require_timestamp:
            raise Dc09Error("missing timestamp")
        data, extended = _blocks(rest)
        events = _events(frame.message_id, data)
        account = frame.account or data_account(data)
        return _document(frame, account, timestamp, events, extended)


def _events(message_id: str, data: str) -> list[dict[str, Any]]:
    if message_id == "SIA-DCS":
        return parse_sia_dcs(data)
    if message_id == "ADM-CID":
        return parse_adm_cid(data)
    if message_id == "NULL":
        return [{"code": None, "description": None, "category": "supervision"}]
    raise Dc09Error("unsupported message type", detail=message_id, reply="DUH")


def _document(
    frame: Frame,
    account: str | None,
    timestamp: str | None,
    events: list[dict[str, Any]],
    extended: dict[str, str],
) -> dict[str, Any]:
    common = {
        "account": account,
        "receiver": frame.receiver,
        "line": frame.line,
        "seq": frame.seq,
        "message_type": frame.message_id,
        "encrypted": frame.encrypted,
    }
    if timestamp is not None:
        common["timestamp"] = timestamp
    records = [{**common, **e, "event_id": f"{frame.seq}.{i}"} for i, e in enumerate(events)]
    return {**common, "events": records, "extended": extended}


def _oh_document(m: re.Match[str]) -> dict[str, Any]:
    """An Osborne-Hoffman heartbeat (``SR0001L0001 acct [ID…]``), accepted only when not strict."""
    common = {
        "account": m["acct"],
        "receiver": m["rcvr"],
        "line": m["line"],
        "seq": "0000",
        "message_type": "OH",
        "encrypted": False,
    }
    record = {
        **common,
        "code": "RP",
        "description": "Automatic Test",
        "category": "test",
        "event_id": "0000.0",
    }
    return {**common, "events": [record], "extended": {}}


class _Dc09Codec:
    name = "dc09"
    options_model: type[BaseModel] = Dc09Options

    def compile(self, options: BaseModel) -> DecodeFn:
        """A decoder bound to the profile's account keys."""
        assert isinstance(options, Dc09Options)
        return _Decoder(options)


CODEC = _Dc09Codec()


def _stamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("_%H:%M:%S,%m-%d-%Y")


def _frame(body: str) -> bytes:
    return f"\n{crc16_arc(body.encode('ascii')):04X}{len(body):04X}{body}\r".encode("ascii")


def _route(frame: Frame) -> str:
    rcvr = f"R{frame.receiver}" if frame.receiver is not None else ""
    acct = f"#{frame.account}" if frame.account is not None else ""
    return f"{frame.seq}{rcvr}L{frame.line}{acct}"


def _encrypted_part(content: str, key: bytes, pad: str) -> str:
    """Hex of AES-CBC(pad + content), the pad filling the text to whole 16-byte blocks."""
    fill = (-len(content)) % 16 or 16
    plain = ((pad * fill)[:fill] + content).encode("latin-1")
    encryptor = _aes(key).encryptor()
    return (encryptor.update(plain) + encryptor.finalize()).hex().upper()


def ack(frame: Frame, now: datetime, key: bytes | None = None, pad: str = "0") -> bytes:
    """The ACK for an accepted (or duplicate) message; encrypted when the message was."""
    if frame.encrypted and key is not None:
        return _frame(f'"*ACK"{_route(frame)}[{_encrypted_part("]" + _stamp(now), key, pad)}')
    return _frame(f'"ACK"{_route(frame)}[]{_stamp(now)}')


def nak(now: datetime) -> bytes:
    """The NAK for a frame with a bad CRC, length or timestamp: it carries the receiver's time."""
    return _frame(f'"NAK"0000R0L0A0[]{_stamp(now)}')


def duh(frame: Frame, now: datetime) -> bytes:
    """The DUH for a valid message the receiver cannot handle (unknown type, no key)."""
    return _frame(f'"DUH"{_route(frame)}[]{_stamp(now)}')
