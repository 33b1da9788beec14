"""API keys: revocation reaches every running hub within seconds; ``usagehub keys list``."""

from __future__ import annotations

import asyncio
import contextlib

from psycopg_pool import AsyncConnectionPool

from tests.integration.hubproc import usagehub
from usagehub.storage.keys import ApiKeys
from usagehub.storage.pool import open_pool


async def test_a_key_revoked_elsewhere_is_refused_at_once_by_a_listening_hub(
        pool: AsyncConnectionPool, database_url: str) -> None:
    hub = ApiKeys(pool, ttl_s=3600)  # a TTL this long: only the notification can refuse the key in time
    listener = asyncio.create_task(hub.listen())
    other_pool = await open_pool(database_url, min_size=1, max_size=1)
    try:
        await asyncio.wait_for(hub.listening.wait(), 5)
        token, principal = await hub.create(role="billing", tenant="t1")
        kept, _ = await hub.create(role="billing", tenant="t1")
        assert await hub.verify(token) == principal  # now cached
        assert await ApiKeys(other_pool).revoke(principal.key_id)  # `usagehub keys revoke` in another process
        async with asyncio.timeout(2):
            while await hub.verify(token) is not None:  # noqa: ASYNC110 — polling the public behaviour
                await asyncio.sleep(0.02)
        assert await hub.verify(kept) is not None
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await other_pool.close()


async def test_without_a_listener_the_cache_expires_after_its_ttl(pool: AsyncConnectionPool) -> None:
    now = [0.0]
    hub = ApiKeys(pool, ttl_s=5, clock=lambda: now[0])
    token, principal = await hub.create(role="admin")
    assert await hub.verify(token) == principal
    await ApiKeys(pool).revoke(principal.key_id)
    now[0] = 4.9
    assert await hub.verify(token) == principal  # cached: at most ttl_s stale
    now[0] = 5.1
    assert await hub.verify(token) is None
    assert await hub.verify(token.replace(token[-3:], "xyz")) is None  # a wrong secret for a known id


async def test_keys_list_create_and_revoke_commands(database_url: str) -> None:
    db = ["--database-url", database_url]
    created = usagehub("keys", "create", "--role", "billing", "--tenant", "acme", "--name", "erp", *db)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    key_id = token.split("_")[1]
    usagehub("keys", "create", "--role", "admin", "--tenant", "other", *db)
    listed = usagehub("keys", "list", "--tenant", "acme", *db)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split("\t")[:3] == ["key_id", "tenant", "role"]
    assert [ln.split("\t")[:4] for ln in lines[1:]] == [[key_id, "acme", "billing", "erp"]]
    assert token.split("_", 2)[2] not in listed.stdout  # never the secret
    assert usagehub("keys", "revoke", key_id, *db).returncode == 0
    assert usagehub("keys", "list", "--tenant", "acme", *db).stdout.splitlines()[1:] == []
    shown = usagehub("keys", "list", "--revoked", *db).stdout
    assert key_id in shown and "other" in shown
