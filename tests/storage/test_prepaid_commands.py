"""Block/restore commands reach devices through a real Mosquitto: once each, and never a stale one late."""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
import orjson
from psycopg_pool import AsyncConnectionPool

from tests.conftest import Mosquitto
from tests.storage.test_prepaid import setup_accounts
from usagehub.prepaid.commands import CommandDispatcher
from usagehub.runtime.config import SHIPPED_PROFILES
from usagehub.runtime.profile_files import load_profiles


async def add_event(pool: AsyncConnectionPool, account: str, kind: str) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO prepaid_events (account_id, kind, balance, funds, currency) "
            "VALUES (%s, %s, 0, 0, 'EUR') RETURNING event_id", (account, kind))
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def sent(pool: AsyncConnectionPool) -> dict[int, int | None]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT event_id, commands FROM prepaid_events WHERE commands_sent_at IS NOT NULL")
        return {int(r[0]): r[1] for r in await cur.fetchall()}


class Broker:
    """The hub's side: publishes commands while connected; raises like the prepaid client while not."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.connected = False

    async def publish(self, topic: str, payload: bytes) -> None:
        if not self.connected:
            raise ConnectionError("prepaid mqtt client is not connected")
        await self.client.publish(topic, payload, qos=1)


async def received(client: aiomqtt.Client, quiet_s: float = 1.0) -> list[tuple[str, Any]]:
    """The commands devices got, until none came for ``quiet_s``."""
    out: list[tuple[str, Any]] = []
    while True:
        try:
            async with asyncio.timeout(quiet_s):
                message = await anext(client.messages)
        except TimeoutError:
            return out
        out.append((message.topic.value, orjson.loads(message.payload)))  # type: ignore[arg-type]


async def test_a_command_superseded_before_it_went_out_is_never_sent(pool: AsyncConnectionPool,
                                                                     mosquitto: Mosquitto) -> None:
    """Configured (blocked) then topped up (restored) while the hub's client was down: the device hears 'restore' only.

    Before, the sweep sent the stale block first, and a device asking for credit right after it was (rightly)
    granted: the account was not blocked any more.
    """
    await setup_accounts(pool)
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="hub-cmd") as hub_client, \
            aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="devices") as devices:
        await devices.subscribe("meters/+/cmd", qos=1)
        broker = Broker(hub_client)
        dispatcher = CommandDispatcher(pool, load_profiles(SHIPPED_PROFILES), broker.publish, timeout_s=5)
        events = []
        for account, kind in (("p1", "blocked"), ("p1", "restored"), ("p2", "blocked")):  # p2: its own latest
            events.append(await add_event(pool, account, kind))
            assert await dispatcher.dispatch(events[-1]) is None  # not connected: left for the sweep
        blocked, restored, other = events
        assert await sent(pool) == {}
        broker.connected = True
        assert await dispatcher.sweep(older_than_s=0) == 3
        got = await received(devices)
        assert sorted((topic, body["command"]) for topic, body in got) == [("meters/m1/cmd", "restore"),
                                                                             ("meters/m2/cmd", "block")]
        assert await sent(pool) == {blocked: 0, restored: 1, other: 1}
        # nothing is sent twice: a second sweep and a late notification find every event done
        assert await dispatcher.sweep(older_than_s=0) == 0
        assert await dispatcher.dispatch(blocked) is None
        assert await received(devices, 0.5) == []
        # a new block after the restore goes out as usual
        again = await add_event(pool, "p1", "blocked")
        assert await dispatcher.dispatch(again) == 1
        assert await received(devices) == [("meters/m1/cmd", {"command": "block"})]
        assert dispatcher.sent == 3
