"""Prepaid events across hub processes: LISTEN on the database, fan out to subscribers and handlers.

Events are rows of ``prepaid_events``; their insert trigger NOTIFYs at commit,
so every hub process sharing the database hears every block, restore and
low-balance alert, whichever process caused it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from decimal import Decimal

import orjson

from usagehub.storage.ledger import PrepaidEvent
from usagehub.storage.notify import listen_forever

log = logging.getLogger(__name__)
CHANNEL = "usagehub_prepaid"
Handler = Callable[[PrepaidEvent], Awaitable[None]]


def event_of(payload: str) -> PrepaidEvent:
    """The event a NOTIFY payload describes."""
    d = orjson.loads(payload)
    return PrepaidEvent(event_id=int(d["id"]), account_id=str(d["account"]), kind=str(d["kind"]),
                        balance=Decimal(d["balance"]), funds=Decimal(d["funds"]), currency=str(d["currency"]),
                        at=datetime.fromisoformat(d["at"]))


class PrepaidEventHub:
    """One LISTEN connection per process; subscribers get queues, handlers get called per event."""

    def __init__(self, conninfo: str, *, queue_max: int = 1000) -> None:
        self.conninfo = conninfo
        self.queue_max = queue_max
        self.handlers: list[Handler] = []
        self.listening = asyncio.Event()
        self._queues: set[asyncio.Queue[PrepaidEvent]] = set()
        self._pending: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Listen until cancelled; reconnects after a lost connection. Cancelled, it stops its handlers too.

        A handler still running at a stop (a dispatch sending block/restore commands to many devices)
        would go on publishing into a closing connection, a failure per device; cancelled, its
        transaction rolls back, the event stays unsent and the sweep of the next start sends it.
        """
        self.listening.clear()
        try:
            await listen_forever(self.conninfo, CHANNEL, lambda payload: self.publish(event_of(payload)),
                                 on_connect=self.listening.set)
        finally:
            pending = list(self._pending)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def publish(self, event: PrepaidEvent) -> None:
        """Give ``event`` to every subscriber (a full queue drops its oldest) and every handler."""
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)
        for handler in self.handlers:
            task = asyncio.create_task(self._call(handler, event))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    @staticmethod
    async def _call(handler: Handler, event: PrepaidEvent) -> None:
        try:
            await handler(event)
        except Exception:  # a failing handler must not stop the listener; the sweep retries commands
            log.exception("prepaid event handler failed for event %d", event.event_id)

    @contextlib.asynccontextmanager
    async def subscription(self) -> AsyncIterator[asyncio.Queue[PrepaidEvent]]:
        """A queue receiving every event from now on."""
        queue: asyncio.Queue[PrepaidEvent] = asyncio.Queue(self.queue_max)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    async def stream(self, account_id: str | None = None) -> AsyncIterator[PrepaidEvent]:
        """Events (of one account, or all) as they happen."""
        async with self.subscription() as queue:
            while True:
                event = await queue.get()
                if account_id is None or event.account_id == account_id:
                    yield event
