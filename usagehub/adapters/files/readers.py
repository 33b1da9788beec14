"""Records of batch files: CSV rows, NDJSON lines, JSON array elements, framed binary records.

Each record is its payload plus a deterministic position (a byte offset, or a line number
for CSV), so importing the same file twice yields the same RawMessages.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePath
from typing import BinaryIO, Literal

import orjson

from usagehub.adapters.binary.framing import FramingSpec, default_framing, make_framer
from usagehub.adapters.http.body import split_body
from usagehub.core.profiles import Profile

Format = Literal["csv", "ndjson", "json", "binary"]
CHUNK = 256 * 1024
MAX_JSON_FILE = 256 * 1024 * 1024  # a JSON array is parsed whole; beyond this use NDJSON
_EXTENSIONS: dict[str, Format] = {".csv": "csv", ".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "json"}


@dataclass(frozen=True, slots=True)
class Record:
    """One record of a file: where it starts and its bytes."""

    offset: int
    payload: bytes


class ReaderError(ValueError):
    """A file cannot be read as its format (not an individual bad record)."""


def detect_format(name: str, profile: Profile) -> Format:
    """The format of a file: by extension, else JSON profiles read NDJSON and others binary."""
    fmt = _EXTENSIONS.get(PurePath(name).suffix.lower())
    if fmt is not None:
        return fmt
    return "ndjson" if profile.decode_type == "json" else "binary"


def read_records(stream: BinaryIO, fmt: Format, profile: Profile) -> Iterator[Record]:
    """Every record of ``stream`` in file order."""
    if fmt == "csv":
        return _csv(stream)
    if fmt == "ndjson":
        return _ndjson(stream)
    if fmt == "json":
        return _json(stream)
    return _binary(stream, default_framing(profile.decode))


def _ndjson(stream: BinaryIO) -> Iterator[Record]:
    offset = 0
    for line in stream:
        payload = line.strip()
        if payload:
            yield Record(offset, payload)
        offset += len(line)


def _json(stream: BinaryIO) -> Iterator[Record]:
    data = stream.read(MAX_JSON_FILE + 1)
    if len(data) > MAX_JSON_FILE:
        raise ReaderError(f"a JSON file over {MAX_JSON_FILE} bytes: export NDJSON instead")
    for index, payload in enumerate(split_body(data, "application/json")):
        yield Record(index, payload)


def _csv(stream: BinaryIO) -> Iterator[Record]:
    """Rows as JSON objects keyed by the header; empty cells are left out (a missing reading)."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="strict", newline="")
    reader = csv.DictReader(text, restkey="_extra")
    line = 1
    try:
        for row in reader:
            start, line = line + 1, reader.line_num
            cells = {k: v for k, v in row.items() if v not in (None, "")}
            yield Record(start, orjson.dumps(cells))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ReaderError(f"line {line + 1}: {err}") from err
    finally:
        text.detach()


def _binary(stream: BinaryIO, framing: FramingSpec | None) -> Iterator[Record]:
    """Framed records with the byte offset where each starts; without framing the file is one record."""
    if framing is None:
        yield Record(0, stream.read())
        return
    framer = make_framer(framing)
    window, window_start, cursor = bytearray(), 0, 0
    while chunk := stream.read(CHUNK):
        window += chunk
        for frame in framer.feed(chunk):
            offset, cursor = _place(framing, window, window_start, cursor, frame)
            yield Record(offset, frame)
        del window[:cursor - window_start]
        window_start = cursor
    rest = framer.flush()
    if rest.strip():  # a truncated last record: quarantined, not dropped
        yield Record(cursor, rest)


def _place(spec: FramingSpec, window: bytearray, window_start: int, cursor: int,
           frame: bytes) -> tuple[int, int]:
    """Where ``frame`` starts (its length prefix included) and where the next search begins."""
    if spec.type == "fixed":
        return cursor, cursor + len(frame)
    if spec.type == "length_prefixed":
        n, at = spec.prefix_bytes, cursor - window_start
        declared = int.from_bytes(window[at:at + n], spec.byte_order) + spec.length_adjust
        stripped = not spec.include_prefix and declared == len(frame)
        return cursor, cursor + len(frame) + (n if stripped else 0)
    # Delimited, M-Bus and DC-09 frames are verbatim bytes of the stream; framers only skip noise.
    found = window.find(frame, cursor - window_start)
    offset = window_start + found if found >= 0 else cursor
    return offset, offset + len(frame)
