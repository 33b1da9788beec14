"""The hub's device key ring: opened from the sealed ``device_keys`` table at start, refreshed while running."""

from __future__ import annotations

import asyncio
import logging

from psycopg_pool import AsyncConnectionPool

from usagehub.core.codecs.keyring import KeyRing, KeySealer
from usagehub.runtime.config import HubConfig
from usagehub.storage.device_keys import DeviceKeys

log = logging.getLogger(__name__)


def device_keys(config: HubConfig, pool: AsyncConnectionPool) -> DeviceKeys | None:
    """The key store, or None when the hub has no ``device_key_secret`` (then no telegram is decrypted)."""
    if not config.device_key_secret:
        return None
    return DeviceKeys(pool, KeySealer(config.device_key_secret))


async def open_keyring(config: HubConfig, pool: AsyncConnectionPool) -> KeyRing:
    """A key ring holding every stored key (empty without a secret)."""
    ring = KeyRing()
    store = device_keys(config, pool)
    if store is not None:
        count = await store.load_into(ring)
        log.info("device keys loaded: %d", count)
    return ring


async def refresh_keyring(config: HubConfig, pool: AsyncConnectionPool, ring: KeyRing) -> None:
    """Reload the keys now and then, so a key added with ``usagehub keys device-set`` is used without a restart."""
    store = device_keys(config, pool)
    if store is None:
        return
    failing = False
    while True:
        await asyncio.sleep(config.device_key_refresh_s)
        try:
            await store.load_into(ring)
            if failing:
                log.info("device key refresh recovered")
            failing = False
        except Exception:  # the previous keys stay in use
            if not failing:
                log.exception("device key refresh failed")
            failing = True
