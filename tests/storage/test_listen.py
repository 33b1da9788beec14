"""LISTEN for as long as a hub runs: a cancel ends the listener (a hub's stop), even one lost below it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from psycopg_pool import AsyncConnectionPool

from usagehub.storage.notify import listen_forever


async def listening_and_handling(pool: AsyncConnectionPool, channel: str,
                                 handle: Callable[[str], Awaitable[None]], handling: asyncio.Event
                                 ) -> asyncio.Task[None]:
    """A listener on ``channel`` that is inside ``handle`` (one NOTIFY sent, ``handling`` set by it)."""
    connected = asyncio.Event()
    listener = asyncio.create_task(listen_forever(str(pool.conninfo), channel, handle, on_connect=connected.set))
    async with asyncio.timeout(10):
        await connected.wait()
    async with pool.connection() as conn:
        await conn.execute("SELECT pg_notify(%s, 'x')", (channel,))
    async with asyncio.timeout(10):
        await handling.wait()
    return listener


async def test_cancel_while_a_handler_runs_ends_the_listener(pool: AsyncConnectionPool) -> None:
    handling, never = asyncio.Event(), asyncio.Event()

    async def handle(payload: str) -> None:
        handling.set()
        await never.wait()  # a handler still busy (reloading meter types, say) when the hub stops

    listener = await listening_and_handling(pool, "uh_listen_test", handle, handling)
    listener.cancel()
    async with asyncio.timeout(10):  # the notifies generator held the connection's lock: this used to hang
        await asyncio.gather(listener, return_exceptions=True)
    assert listener.cancelled()


async def test_a_cancel_lost_below_the_listener_still_ends_it(pool: AsyncConnectionPool) -> None:
    """A cancel swallowed under the listener (seen inside the driver under load) must not keep it running."""
    handling = asyncio.Event()
    heard: list[str] = []

    async def handle(payload: str) -> None:
        heard.append(payload)
        handling.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return  # the lost cancel: the task stays "cancelling" and its wait goes on

    listener = await listening_and_handling(pool, "uh_listen_lost", handle, handling)
    listener.cancel()
    done, _ = await asyncio.wait({listener}, timeout=10)  # without the guard this waits forever
    assert done and listener.cancelled() and heard == ["x"]
