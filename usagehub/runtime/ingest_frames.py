"""The frames between ``serve`` and its ingest processes: received MQTT messages one way, committed tokens back.

A frame is a 4-byte big-endian length and its body. A hello opens a connection: the child's index and
the secret the hub started it with (the socket lies in a folder only the hub's user may enter; the secret
also proves the caller is its child). The hub then sends batches of messages, each ``(token, received_at,
topic, payload)``; the child answers with reports: the tokens of the messages whose batch committed, and
what its counters and batches say since the last report (JSON, ``ingest_counters``). A frame is
checked even so: a body that does not parse ends the connection (``FrameError``), and the hub sends what
was not acknowledged again on the next one.
"""

from __future__ import annotations

import asyncio
import hmac
import struct
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from usagehub.core.events import RawMessage

_LEN = struct.Struct("!I")
_HEAD = struct.Struct("!QqHI")  # token, received_at (µs since the epoch), topic length, payload length
_TOKEN = struct.Struct("!Q")
_COUNT = struct.Struct("!I")  # tokens in a report
MAX_FRAME = (1 << 32) - 1  # what the length can say: the hub's frames are bounded by its window and MQTT's
HELLO_MAX = 64  # a hello's bound, before the caller is known
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class FrameError(Exception):
    """A frame that does not parse: the connection is closed."""


def frame(body: bytes) -> bytes:
    """``body`` with its length in front."""
    return _LEN.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader, max_size: int = MAX_FRAME) -> bytes | None:
    """The next frame's body (FrameError beyond ``max_size`` bytes), or None at a clean end of the stream."""
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError as err:
        if err.partial:
            raise FrameError("the stream ended inside a frame header") from err
        return None
    (size,) = _LEN.unpack(head)
    if size > max_size:
        raise FrameError(f"a frame of {size} bytes (at most {max_size})")
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as err:
        raise FrameError("the stream ended inside a frame") from err


def hello(index: int, secret: bytes) -> bytes:
    """The child's first frame: which of the hub's ingest processes it is, and the secret it was started with."""
    return frame(_TOKEN.pack(index) + secret)


def parse_hello(body: bytes, secret: bytes) -> int:
    """The index a hello names; FrameError unless it carries ``secret``."""
    if len(body) != _TOKEN.size + len(secret) or not hmac.compare_digest(body[_TOKEN.size:], secret):
        raise FrameError("a hello without the hub's secret")
    return int(_TOKEN.unpack_from(body)[0])


def encode_messages(items: Iterable[tuple[int, RawMessage]]) -> bytes:
    """One frame of messages (MQTT: transport, topic, payload and arrival are all a message carries)."""
    parts: list[bytes] = []
    for token, message in items:
        topic = message.topic.encode()
        at = message.received_at - _EPOCH
        micros = (at.days * 86_400 + at.seconds) * 1_000_000 + at.microseconds
        parts += (_HEAD.pack(token, micros, len(topic), len(message.payload)), topic, message.payload)
    return frame(b"".join(parts))


def decode_messages(body: bytes, transport: str = "mqtt") -> list[tuple[int, RawMessage]]:
    """The messages of a frame body."""
    out: list[tuple[int, RawMessage]] = []
    offset, end, head = 0, len(body), _HEAD.size
    try:
        while offset < end:
            token, micros, topic_len, payload_len = _HEAD.unpack_from(body, offset)
            offset += head
            topic = body[offset:offset + topic_len].decode()
            offset += topic_len
            payload = body[offset:offset + payload_len]
            offset += payload_len
            if offset > end:
                raise FrameError("a message runs past its frame")
            out.append((token, RawMessage(transport=transport, topic=topic, payload=payload,
                                          received_at=_EPOCH + timedelta(microseconds=micros))))
    except (struct.error, UnicodeDecodeError, OverflowError) as err:
        raise FrameError(f"a message frame does not parse: {err}") from err
    return out


def encode_report(tokens: list[int], figures: dict[str, Any] | None = None) -> bytes:
    """One frame of committed tokens, and the child's figures since its last report (``ingest_counters``)."""
    return frame(_COUNT.pack(len(tokens)) + struct.pack(f"!{len(tokens)}Q", *tokens)
                 + (orjson.dumps(figures) if figures else b""))


def decode_report(body: bytes) -> tuple[tuple[int, ...], Any]:
    """The tokens of a report's body and its figures document (an empty dict when it carries none)."""
    if len(body) < _COUNT.size:
        raise FrameError(f"a report of {len(body)} bytes")
    (count,) = _COUNT.unpack_from(body)
    end = _COUNT.size + count * _TOKEN.size
    if len(body) < end:
        raise FrameError(f"a report of {len(body)} bytes for {count} tokens")
    try:
        figures = orjson.loads(body[end:]) if len(body) > end else {}
    except orjson.JSONDecodeError as err:
        raise FrameError(f"a report's figures do not parse: {err}") from err
    return struct.unpack_from(f"!{count}Q", body, _COUNT.size), figures
