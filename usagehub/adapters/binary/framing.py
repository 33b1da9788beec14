"""Framings that cut a byte stream into frames: fixed, length-prefixed, delimited, M-Bus, DC-09.

Framing is apart from decoding (Vector's ``framing/`` vs ``format/``): a framer
only finds frame boundaries. Bytes that fit no frame are not thrown away: they
come out as a frame of their own, so the decoder refuses them and they land in
quarantine with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from usagehub.core.codecs.dlms_hdlc import hdlc_frames
from usagehub.errors import DecodeError


class FramingSpec(BaseModel):
    """How frames are delimited on a stream (``decode.framing`` of a profile, or the listener's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["fixed", "length_prefixed", "delimited", "mbus", "dc09", "dlms_hdlc"]
    size: int | None = Field(None, ge=1, le=1 << 20, description="fixed: bytes per frame")
    prefix_bytes: Literal[1, 2, 4] = 2
    byte_order: Literal["big", "little"] = "big"
    length_adjust: int = Field(0, description="added to the prefix value to get the bytes that follow it")
    include_prefix: bool = False
    delimiter: str = "\n"
    max_frame_bytes: int = Field(65536, ge=16)


class Framer(Protocol):
    """Stateful splitter: ``feed`` bytes, get the complete frames found so far."""

    def feed(self, data: bytes) -> list[bytes]: ...

    def flush(self) -> bytes: ...


class _Base:
    def __init__(self, spec: FramingSpec) -> None:
        self.spec, self.buf = spec, bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data`` and return every complete frame."""
        self.buf += data
        out = list(self._frames())
        if len(self.buf) > self.spec.max_frame_bytes:
            out.append(bytes(self.buf))  # an oversized non-frame: quarantined, never buffered forever
            self.buf.clear()
        return out

    def flush(self) -> bytes:
        """What is left when the stream ends (an incomplete frame, or nothing)."""
        rest = bytes(self.buf)
        self.buf.clear()
        return rest

    def _take(self, count: int) -> bytes:
        chunk = bytes(self.buf[:count])
        del self.buf[:count]
        return chunk

    def _frames(self) -> Iterator[bytes]:
        raise NotImplementedError


class _Fixed(_Base):
    def _frames(self) -> Iterator[bytes]:
        size = self.spec.size or 1
        while len(self.buf) >= size:
            yield self._take(size)


class _LengthPrefixed(_Base):
    def _frames(self) -> Iterator[bytes]:
        n = self.spec.prefix_bytes
        while len(self.buf) >= n:
            body = int.from_bytes(self.buf[:n], self.spec.byte_order) + self.spec.length_adjust
            if body < 0 or body > self.spec.max_frame_bytes:
                yield self._take(len(self.buf))  # a corrupt prefix: resynchronising is guesswork
                return
            if len(self.buf) < n + body:
                return
            frame = self._take(n + body)
            yield frame if self.spec.include_prefix else frame[n:]


class _Delimited(_Base):
    def _frames(self) -> Iterator[bytes]:
        delim = self.spec.delimiter.encode("latin-1")
        while (end := self.buf.find(delim)) >= 0:
            frame = self._take(end)
            del self.buf[: len(delim)]
            if frame:
                yield frame


class _Mbus(_Base):
    """``68 L L 68 … 16`` long frames; the single-byte ACK ``E5`` is skipped as link noise."""

    def _frames(self) -> Iterator[bytes]:
        while self.buf:
            if self.buf[0] == 0xE5:
                del self.buf[0]
                continue
            if self.buf[0] != 0x68:
                start = self.buf.find(b"\x68")
                yield self._take(start if start > 0 else len(self.buf))
                continue
            if len(self.buf) < 4:
                return
            if self.buf[1] != self.buf[2] or self.buf[3] != 0x68:
                nxt = self.buf.find(b"\x68", 1)
                yield self._take(nxt if nxt > 0 else len(self.buf))
                continue
            total = self.buf[1] + 6
            if len(self.buf) < total:
                return
            yield self._take(total)


class _Dc09(_Base):
    """``LF … CR``; text before an LF is yielded as a frame of its own (and refused by the decoder)."""

    def _frames(self) -> Iterator[bytes]:
        while self.buf:
            start = self.buf.find(b"\n")
            if start < 0:
                return
            if start > 0:
                junk = self._take(start)
                if junk.strip():
                    yield junk
                continue
            end = self.buf.find(b"\r")
            if end < 0:
                return
            yield self._take(end + 1)


class _DlmsHdlc(_Base):
    """DLMS pushes: HDLC frames ``7E A0/A8 … 7E`` kept together until the push ends (no segmentation
    bit, and no general-block-transfer block that says more follow)."""

    def __init__(self, spec: FramingSpec) -> None:
        super().__init__(spec)
        self.push = bytearray()

    def _frames(self) -> Iterator[bytes]:
        while self.buf:
            if self.buf[0] != 0x7E or (len(self.buf) > 1 and self.buf[1] == 0x7E):
                start = self.buf.find(b"\x7e", 1)
                junk = self._take(start if start > 0 else len(self.buf))
                if junk.strip(b"\x7e"):
                    yield junk
                continue
            if len(self.buf) < 3:
                return
            total = ((self.buf[1] << 8 | self.buf[2]) & 0x7FF) + 2
            if len(self.buf) < total:
                return
            frame = self._take(total)
            try:
                ((segmented, info),) = hdlc_frames(frame)
            except DecodeError:
                yield bytes(self.push) + frame  # quarantined with the reason by the decoder
                self.push.clear()
                continue
            self.push += frame
            body = info[3:] if info.startswith(b"\xe6\xe7\x00") else info
            if not segmented and not (body[:1] == b"\xe0" and len(body) > 1 and not body[1] & 0x80):
                yield bytes(self.push)
                self.push.clear()

    def flush(self) -> bytes:
        """An unfinished push and whatever followed it."""
        rest = bytes(self.push) + super().flush()
        self.push.clear()
        return rest


_KINDS: dict[str, type[_Base]] = {
    "fixed": _Fixed,
    "length_prefixed": _LengthPrefixed,
    "delimited": _Delimited,
    "mbus": _Mbus,
    "dc09": _Dc09,
    "dlms_hdlc": _DlmsHdlc,
}


def make_framer(spec: FramingSpec) -> Framer:
    """A new framer for one stream."""
    return _KINDS[spec.type](spec)


def split_frames(data: bytes, spec: FramingSpec) -> list[bytes]:
    """All frames of a complete byte string (a file); a trailing partial frame is returned too."""
    framer = make_framer(spec)
    frames = framer.feed(data)
    rest = framer.flush()
    if rest.strip():
        frames.append(rest)
    return frames


def default_framing(decode: dict[str, object]) -> FramingSpec | None:
    """The framing a profile's ``decode`` block implies: its ``framing``, else the codec's own."""
    explicit = decode.get("framing")
    if isinstance(explicit, dict):
        return FramingSpec.model_validate(explicit)
    kind = decode.get("type")
    if kind in ("mbus", "dc09"):
        return FramingSpec(type=kind)
    if kind == "dlms_push":
        return FramingSpec(type="dlms_hdlc")
    return None
