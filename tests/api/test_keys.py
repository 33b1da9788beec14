"""API keys: revocation reaches every running hub within seconds; ``usagehub keys list``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
from psycopg_pool import AsyncConnectionPool

from tests.integration.hubproc import EmbeddedBrokerHub, usagehub
from tests.peers import time_scale
from usagehub.storage.keys import CHANNEL, ApiKeys
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


async def _listener_backends(pool: AsyncConnectionPool) -> list[int]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT pid FROM pg_stat_activity WHERE query = %s", (f"LISTEN {CHANNEL}",))
        return [int(r[0]) for r in await cur.fetchall()]


async def test_a_key_revoked_while_the_listener_was_down_is_refused_once_it_reconnects(
        pool: AsyncConnectionPool, database_url: str) -> None:
    hub = ApiKeys(pool, ttl_s=3600)  # only the reload on reconnection can refuse the key in time
    listener = asyncio.create_task(hub.listen(retry_s=0.3))
    try:
        await asyncio.wait_for(hub.listening.wait(), 5)
        token, principal = await hub.create(role="billing", tenant="t1")
        kept, _ = await hub.create(role="billing", tenant="t2")
        assert await hub.verify(token) == principal and await hub.verify(kept) is not None  # both cached
        [backend] = await _listener_backends(pool)
        async with pool.connection() as conn:
            await conn.execute("SELECT pg_terminate_backend(%s)", (backend,))
        async with asyncio.timeout(5):
            while hub.listening.is_set():  # noqa: ASYNC110 — the listener notices its loss
                await asyncio.sleep(0.01)
        async with pool.connection() as conn:  # revoked with no NOTIFY at all: nobody could hear one now
            await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = %s", (principal.key_id,))
        assert await hub.verify(token) == principal  # still cached while the listener is down (TTL 1 h)
        await asyncio.wait_for(hub.listening.wait(), 5)
        assert await _listener_backends(pool) not in ([], [backend])  # a new LISTEN connection
        assert await hub.verify(token) is None
        assert await hub.verify(kept) is not None
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


def test_a_running_hub_refuses_a_key_within_a_second_of_keys_revoke(database_url: str, tmp_path: Path) -> None:
    hub = EmbeddedBrokerHub(database_url, tmp_path / "data")
    hub.start()
    try:
        token = hub.key("billing")
        other = hub.key("billing")
        query = "{ ingestStats { messages } }"
        assert "data" in hub.graphql(query, token)  # verified, now in the hub's 5 s cache
        revoked = usagehub("keys", "revoke", token.split("_")[1], *hub.settings)
        assert revoked.returncode == 0, revoked.stdout + revoked.stderr
        refused_at, deadline = None, time.monotonic() + 1.0 * time_scale()
        while time.monotonic() < deadline:
            reply = httpx.post(f"http://127.0.0.1:{hub.port}/graphql", json={"query": query},
                               headers={"Authorization": f"Bearer {token}"}, timeout=5)
            if reply.status_code == 401:
                refused_at = time.monotonic()
                break
            time.sleep(0.05)
        assert refused_at is not None, "the revoked key still works after a second"
        assert "data" in hub.graphql(query, other)
    finally:
        assert hub.terminate() == 0
