"""Bearer tokens of devices and gateways, looked up in the device registry by their SHA-256."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable

from usagehub.adapters.base import DeviceDirectory, DeviceEndpoint


def token_hash(token: str) -> bytes:
    """SHA-256 of a token: what is kept in memory and compared."""
    return hashlib.sha256(token.encode()).digest()


class TokenIndex:
    """Maps token hashes to registry endpoints; rescans the registry when stale or on a miss."""

    def __init__(self, devices: DeviceDirectory, *, secret: str = "http_token", cache_s: float = 60.0,
                 miss_refresh_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._devices, self._secret = devices, secret
        self._cache_s, self._miss_refresh_s, self._clock = cache_s, miss_refresh_s, clock
        self._by_hash: dict[bytes, DeviceEndpoint] = {}
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()

    async def lookup(self, token: str) -> DeviceEndpoint | None:
        """The device or gateway holding ``token``, or None."""
        digest = token_hash(token)
        if self._age() > self._cache_s:
            await self._reload()
        found = self._find(digest)
        if found is None and self._age() > self._miss_refresh_s:
            await self._reload()  # a device registered a moment ago
            found = self._find(digest)
        return found

    def _find(self, digest: bytes) -> DeviceEndpoint | None:
        endpoint = self._by_hash.get(digest)
        if endpoint is None:
            return None
        stored = _stored_hash(endpoint, self._secret)
        # The dict lookup found it by hash; compare once more in constant time before trusting it.
        return endpoint if stored is not None and hmac.compare_digest(stored, digest) else None

    def _age(self) -> float:
        return float("inf") if self._loaded_at is None else self._clock() - self._loaded_at

    async def _reload(self) -> None:
        seen = self._loaded_at
        async with self._lock:
            if self._loaded_at != seen:
                return  # another request reloaded while we waited
            by_hash = {}
            for endpoint in await self._devices.endpoints():
                stored = _stored_hash(endpoint, self._secret)
                if stored is not None:
                    by_hash[stored] = endpoint
            self._by_hash, self._loaded_at = by_hash, self._clock()


def _stored_hash(endpoint: DeviceEndpoint, secret: str) -> bytes | None:
    hashed = endpoint.secrets.get(f"{secret}_sha256")
    if hashed:
        try:
            return bytes.fromhex(hashed)
        except ValueError:
            return None
    token = endpoint.secrets.get(secret)
    return token_hash(token) if token else None
