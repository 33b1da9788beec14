"""Pseudonymous account ids: a stable keyed hash, so aggregates can be joined without naming anyone."""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "p_"


def pseudonym(account_id: str, secret: bytes, length: int = 16) -> str:
    """HMAC-SHA256 of the account id under the hub's secret, hex, truncated (64 bits by default)."""
    if len(secret) < 16:
        raise ValueError("the pseudonym secret needs at least 16 bytes")
    digest = hmac.new(secret, account_id.encode(), hashlib.sha256).hexdigest()
    return PREFIX + digest[:length]
