"""API keys: ``uh_<id>_<secret>``; only a hash of the secret is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from usagehub.storage.pool import mapped_errors

ROLES = ("admin", "billing", "analytics", "operator")


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """Who a request runs as."""

    key_id: str
    role: str
    tenant: str


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class ApiKeys:
    """Create and verify API keys; verified keys are cached briefly."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self._cache: dict[str, Principal] = {}

    async def create(self, *, role: str, tenant: str = "default", name: str = "") -> tuple[str, Principal]:
        """A new key (shown once) and its principal."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(24)
        async with mapped_errors(), self.pool.connection() as conn:
            await conn.execute("INSERT INTO api_keys (key_id, tenant, role, secret_hash, name) "
                               "VALUES (%s, %s, %s, %s, %s)", (key_id, tenant, role, _hash(secret), name))
        return f"uh_{key_id}_{secret}", Principal(key_id=key_id, role=role, tenant=tenant)

    async def verify(self, token: str) -> Principal | None:
        """The principal of a valid, unrevoked key; None otherwise."""
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "uh" or len(token) > 200:
            return None
        _, key_id, secret = parts
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute("SELECT role, tenant, secret_hash FROM api_keys "
                                     "WHERE key_id = %s AND revoked_at IS NULL", (key_id,))
            row = await cur.fetchone()
        if row is None or not hmac.compare_digest(bytes(row[2]), _hash(secret)):
            return None
        principal = Principal(key_id=key_id, role=str(row[0]), tenant=str(row[1]))
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token] = principal
        return principal

    async def from_header(self, authorization: str) -> Principal | None:
        """The principal of an ``Authorization: Bearer <key>`` header value; None if absent or invalid."""
        token = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
        return await self.verify(token) if token else None

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key; True when it existed."""
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = %s "
                                     "AND revoked_at IS NULL", (key_id,))
            self._cache.clear()
            return cur.rowcount == 1
