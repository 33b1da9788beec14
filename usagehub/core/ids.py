"""Identifiers given at registration (accounts, devices): printable, bounded, safe to log and export."""

from __future__ import annotations

import unicodedata

from usagehub.errors import DomainError

ID_MAX = 200
# Control, format (bidi overrides, zero-width), line/paragraph separators, surrogates, private use, unassigned.
_REFUSED = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def check_id(kind: str, value: str) -> str:
    """``value`` if it is a usable identifier (1 to 200 characters, no control or format characters, no
    surrounding spaces); a BAD_ID DomainError naming ``kind`` otherwise."""
    if not value or len(value) > ID_MAX:
        raise DomainError("BAD_ID", f"{kind} id must have 1 to {ID_MAX} characters")
    if value != value.strip():
        raise DomainError("BAD_ID", f"{kind} id must not begin or end with spaces")
    for ch in value:
        if unicodedata.category(ch) in _REFUSED:
            raise DomainError("BAD_ID", f"{kind} id must not contain control characters (found U+{ord(ch):04X})")
    return value
