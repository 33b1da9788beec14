"""LISTEN on a PostgreSQL channel for as long as a hub runs: reconnect after a loss, log it once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import psycopg

log = logging.getLogger(__name__)

# How often the wait for notifications returns to this module (a NOTIFY wakes it at once). Under load, a cancel
# that lands inside psycopg's wait has been seen to be lost (the task stayed "cancelling" while it went on
# waiting, and a hub's or test's shutdown waited forever): each return checks for one.
WAKE_S = 1.0


def _raise_if_cancelled(channel: str) -> None:
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        log.warning("a cancellation of the %s listener was lost inside the driver; ending it now", channel)
        raise asyncio.CancelledError


async def listen_forever(conninfo: str, channel: str, handle: Callable[[str], Awaitable[None] | None], *,
                         on_connect: Callable[[], Awaitable[None] | None] | None = None,
                         on_lost: Callable[[], None] | None = None, retry_s: float = 1.0) -> None:
    """Call ``handle(payload)`` for every NOTIFY on ``channel`` until cancelled.

    ``on_connect`` runs after each (re)connection, once LISTEN is in place: what was missed while the
    connection was down is caught up there; ``on_lost`` runs when the connection is lost. A lost connection
    is logged once per outage and once on recovery.
    """
    lost = False
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                await conn.execute(f"LISTEN {channel}")
                if on_connect is not None and (result := on_connect()) is not None:
                    await result
                if lost:
                    log.info("listening on %s again", channel)
                    lost = False
                while True:
                    # Closed on the way out: a generator left suspended (cancelled while a handler ran) keeps the
                    # connection's lock, and leaving the connection (its rollback) would then wait for it forever.
                    async with contextlib.aclosing(conn.notifies(timeout=WAKE_S)) as notifies:
                        async for notify in notifies:
                            if (result := handle(notify.payload)) is not None:
                                await result
                    _raise_if_cancelled(channel)
        except psycopg.Error as err:
            if on_lost is not None:
                on_lost()
            if not lost:
                log.warning("lost the %s listener connection (%s); reconnecting", channel, err)
                lost = True
            await asyncio.sleep(retry_s)
