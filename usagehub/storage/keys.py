"""API keys: ``uh_<id>_<secret>``; only a hash of the secret is stored.

Verified keys are cached for a few seconds. A revocation is final everywhere
within that TTL: ``revoke`` NOTIFYs ``usagehub_keys`` at commit and every hub
that runs ``listen()`` drops the key at once; a hub whose listener is down
still re-reads the key when its cache entry expires.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from psycopg_pool import AsyncConnectionPool

from usagehub.storage.notify import listen_forever
from usagehub.storage.pool import mapped_errors

log = logging.getLogger(__name__)
ROLES = ("admin", "billing", "analytics", "operator")
CHANNEL = "usagehub_keys"
CACHE_MAX = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """Who a request runs as."""

    key_id: str
    role: str
    tenant: str


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyInfo:
    """A stored key as ``keys list`` shows it (never its secret)."""

    key_id: str
    tenant: str
    role: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class ApiKeys:
    """Create, list, revoke and verify API keys; verified keys are cached for ``ttl_s`` seconds."""

    def __init__(self, pool: AsyncConnectionPool, *, ttl_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        self.clock = clock
        self.listening = asyncio.Event()
        self._cache: dict[str, tuple[Principal, float]] = {}

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
        now = self.clock()
        if cached is not None and cached[1] > now:
            return cached[0]
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "uh" or len(token) > 200:
            return None
        _, key_id, secret = parts
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute("SELECT role, tenant, secret_hash FROM api_keys "
                                     "WHERE key_id = %s AND revoked_at IS NULL", (key_id,))
            row = await cur.fetchone()
        if row is None or not hmac.compare_digest(bytes(row[2]), _hash(secret)):
            self._cache.pop(token, None)
            return None
        principal = Principal(key_id=key_id, role=str(row[0]), tenant=str(row[1]))
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[token] = (principal, now + self.ttl_s)
        return principal

    async def from_header(self, authorization: str) -> Principal | None:
        """The principal of an ``Authorization: Bearer <key>`` header value; None if absent or invalid."""
        token = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
        return await self.verify(token) if token else None

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key (every hub listening forgets it at commit); True when it was active."""
        async with mapped_errors(), self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = %s "
                                     "AND revoked_at IS NULL", (key_id,))
            await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, key_id))
            revoked = cur.rowcount == 1
        self.forget(key_id)
        return revoked

    def forget(self, key_id: str) -> None:
        """Drop a key from this process's cache."""
        for token in [t for t, (p, _) in self._cache.items() if p.key_id == key_id]:
            self._cache.pop(token, None)

    async def list_keys(self, *, tenant: str | None = None, revoked: bool = False) -> list[KeyInfo]:
        """Keys (of one tenant, or all), oldest first; revoked ones only when asked."""
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT key_id, tenant, role, name, created_at, revoked_at FROM api_keys "
                "WHERE (%s::text IS NULL OR tenant = %s) AND (%s OR revoked_at IS NULL) "
                "ORDER BY created_at, key_id", (tenant, tenant, revoked))
            rows = await cur.fetchall()
        return [KeyInfo(key_id=r[0], tenant=r[1], role=r[2], name=r[3], created_at=r[4], revoked_at=r[5])
                for r in rows]

    async def listen(self, retry_s: float = 1.0) -> None:
        """Forget revoked keys as other processes revoke them; runs until cancelled, reconnecting.

        After each (re)connection the whole cache is dropped: a key revoked while the listener was down
        is re-read (and refused) at its next use, not ``ttl_s`` later.
        """
        await listen_forever(str(self.pool.conninfo), CHANNEL, self.forget, on_connect=self._listening,
                             on_lost=self.listening.clear, retry_s=retry_s)

    def _listening(self) -> None:
        self._cache.clear()  # revocations missed while not listening
        self.listening.set()
