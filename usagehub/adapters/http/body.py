"""Splitting an ingest body into lines: a JSON array, one JSON document, or NDJSON."""

from __future__ import annotations

import re

import orjson

# A complete JSON string, or one structural character: enough to find top-level commas.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},]')

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl",
                          "application/x-jsonlines", "application/json-seq"})


class BodyError(ValueError):
    """The body cannot be split into lines (it is still quarantined by the caller)."""


def split_body(body: bytes, content_type: str) -> list[bytes]:
    """The payload of each line; a body that is no JSON at all is one (undecodable) line.

    A JSON array yields the exact bytes of its elements (not re-serialised: orjson would
    turn a 20-digit register into a float); any other JSON document is one line; NDJSON
    yields its non-blank lines.
    """
    if not body.strip():
        return []
    media = content_type.split(";", 1)[0].strip().lower()
    if media in NDJSON_TYPES:
        return _ndjson(body)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        if media != "application/json" and b"\n" in body.strip():
            return _ndjson(body)  # NDJSON sent without its media type
        return [body]  # the pipeline quarantines it with the decoder's reason
    if isinstance(document, list):
        return _array_elements(body)
    return [body]


def _array_elements(body: bytes) -> list[bytes]:
    """The raw bytes of each top-level element of a body already known to be a JSON array."""
    items: list[bytes] = []
    depth, start = 0, -1
    for m in _TOKENS.finditer(body):
        token = m.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth == 1:
                start = m.end()
        elif token in (b"]", b"}"):
            depth -= 1
            if depth == 0:
                items.append(body[start:m.start()].strip())
                break
        elif token == b"," and depth == 1:
            items.append(body[start:m.start()].strip())
            start = m.end()
    return [item for item in items if item]


def _ndjson(body: bytes) -> list[bytes]:
    return [line.strip() for line in body.split(b"\n") if line.strip()]
