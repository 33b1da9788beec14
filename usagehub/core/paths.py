"""Field paths into decoded documents: ``$``, ``$.a.b``, ``$.items[0].v``, ``$['odd key']``.

A deliberately small subset of JSONPath, compiled once per profile so that the
hot path is a loop of ``__getitem__`` calls.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_TOKEN = re.compile(r"""\.([A-Za-z_][A-Za-z0-9_\-]*)|\[(\d+)\]|\[['"]([^'"]+)['"]\]""")

_MISSING = object()


class PathSyntaxError(ValueError):
    """A field path does not follow the ``$.a.b[0]`` grammar."""


@dataclass(frozen=True, slots=True)
class FieldPath:
    """A compiled path: a tuple of mapping keys (str) and sequence indexes (int)."""

    text: str
    steps: tuple[str | int, ...]
    key: str | None = None  # the one step of ``$.name``: a JSON object's field, looked up at once

    def get(self, document: object) -> object:
        """The value at this path, or ``MISSING`` when any step is absent."""
        if self.key is not None and type(document) is dict:
            return document.get(self.key, _MISSING)
        node = document
        for step in self.steps:
            if type(node) is dict and type(step) is str:  # the common case (JSON objects), without ABC checks
                node = node.get(step, _MISSING)
                if node is _MISSING:
                    return _MISSING
                continue
            if isinstance(step, int):
                if not isinstance(node, Sequence) or isinstance(node, str | bytes) or step >= len(node):
                    return _MISSING
                node = node[step]
            else:
                if not isinstance(node, Mapping):
                    return _MISSING
                node = node.get(step, _MISSING)
                if node is _MISSING:
                    return _MISSING
        return node


MISSING = _MISSING


def compile_path(text: str) -> FieldPath:
    """Compile ``$.a.b[0]`` into a :class:`FieldPath`; raise PathSyntaxError if malformed."""
    if not text.startswith("$"):
        raise PathSyntaxError(f"path {text!r} must start with '$'")
    steps: list[str | int] = []
    pos = 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise PathSyntaxError(f"path {text!r}: unexpected {text[pos:]!r} at offset {pos}")
        key, index, quoted = m.groups()
        steps.append(int(index) if index is not None else (key or quoted))
        pos = m.end()
    return FieldPath(text, tuple(steps), steps[0] if len(steps) == 1 and isinstance(steps[0], str) else None)
