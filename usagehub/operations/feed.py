"""Alerts across hub processes: LISTEN on the database, fan out each new alert to the subscribers of its tenant."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from psycopg_pool import AsyncConnectionPool

from usagehub.storage.alerts import AlertRow, alert_by_id
from usagehub.storage.notify import listen_forever
from usagehub.storage.pool import mapped_errors

CHANNEL = "usagehub_alerts"


class AlertFeed:
    """One LISTEN connection per process; each subscriber gets a bounded queue (a full one drops its oldest)."""

    def __init__(self, conninfo: str, pool: AsyncConnectionPool, *, queue_max: int = 1000) -> None:
        self.conninfo, self.pool, self.queue_max = conninfo, pool, queue_max
        self.listening = asyncio.Event()
        self._queues: dict[asyncio.Queue[AlertRow], str] = {}

    async def run(self) -> None:
        """Listen until cancelled (reconnecting after a loss)."""
        await listen_forever(self.conninfo, CHANNEL, self._on_notify, on_connect=self.listening.set)

    async def _on_notify(self, payload: str) -> None:
        await self._publish(int(payload))

    async def _publish(self, alert_id: int) -> None:
        if not self._queues:
            return
        async with mapped_errors(), self.pool.connection() as conn:
            alert = await alert_by_id(conn, alert_id)
        if alert is None:
            return
        for queue, tenant in self._queues.items():
            if tenant != alert.tenant:
                continue
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(alert)

    @contextlib.asynccontextmanager
    async def subscription(self, tenant: str) -> AsyncIterator[asyncio.Queue[AlertRow]]:
        """A queue receiving every new alert of ``tenant`` from now on."""
        queue: asyncio.Queue[AlertRow] = asyncio.Queue(self.queue_max)
        self._queues[queue] = tenant
        try:
            yield queue
        finally:
            self._queues.pop(queue, None)

    async def stream(self, tenant: str) -> AsyncIterator[AlertRow]:
        """New alerts of ``tenant`` as they are raised."""
        async with self.subscription(tenant) as queue:
            while True:
                yield await queue.get()
