"""A hub's prepaid events stop with it: a dispatch in flight is cancelled, its event left for the next sweep."""

from __future__ import annotations

import asyncio

from psycopg_pool import AsyncConnectionPool

from tests.storage.test_prepaid import setup_accounts
from tests.storage.test_prepaid_commands import add_event, sent
from usagehub.prepaid.commands import CommandDispatcher
from usagehub.prepaid.events import PrepaidEventHub
from usagehub.runtime.config import SHIPPED_PROFILES
from usagehub.runtime.profile_files import load_profiles


class StuckBroker:
    """A publish that never completes (a broker going away under a long dispatch)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = 0

    async def publish(self, topic: str, payload: bytes) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


async def test_stopping_the_event_hub_cancels_its_dispatches_and_the_sweep_sends_later(
        pool: AsyncConnectionPool, database_url: str) -> None:
    await setup_accounts(pool)
    profiles = load_profiles(SHIPPED_PROFILES)
    stuck = StuckBroker()
    hub = PrepaidEventHub(database_url)
    hub.handlers.append(CommandDispatcher(pool, profiles, stuck.publish).on_event)
    task = asyncio.create_task(hub.run())
    async with asyncio.timeout(20):
        await hub.listening.wait()
        event = await add_event(pool, "p1", "blocked")  # its NOTIFY reaches the hub: a dispatch starts
        await stuck.started.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert stuck.cancelled == 1 and not hub._pending  # nothing left running after the stop
    assert await sent(pool) == {}  # rolled back: not marked sent

    published: list[str] = []

    async def publish(topic: str, payload: bytes) -> None:
        published.append(topic)

    later = CommandDispatcher(pool, profiles, publish)  # the next start's sweep
    assert await later.sweep(older_than_s=0) == 1
    assert published == ["meters/m1/cmd"] and await sent(pool) == {event: 1}
