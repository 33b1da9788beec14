"""Prepaid in a running hub: the pricer, the continuous-debit hook, the service, events, commands, device side."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import AsyncConnectionPool

from usagehub.adapters.mqtt.config import MqttConfig
from usagehub.adapters.mqtt.prepaid import PrepaidMqtt, PrepaidMqttSettings
from usagehub.core.profiles import Profile
from usagehub.pipeline.pipeline import BatchHook
from usagehub.pipeline.prepaid_debit import PrepaidDebit
from usagehub.pipeline.sessions import SessionEngine
from usagehub.prepaid.commands import CoapCommands, CommandDispatcher
from usagehub.prepaid.events import PrepaidEventHub
from usagehub.prepaid.service import PrepaidService
from usagehub.storage.prepaid_batch import Pricer

log = logging.getLogger(__name__)


def pricer_for(pool: AsyncConnectionPool) -> Pricer:
    """Rating prices prepaid usage (gross, exact)."""
    from usagehub.rating.service import RatingService

    return RatingService(pool)


def debit_hook(pool: AsyncConnectionPool, engine: SessionEngine) -> BatchHook:
    """The batch hook debiting prepaid usage; append it after ``engine.apply``."""
    return PrepaidDebit(pricer_for(pool), lambda: engine.last_points).apply


@dataclass
class PrepaidRuntime:
    """The prepaid parts of one hub process and their background tasks."""

    service: PrepaidService
    events: PrepaidEventHub
    dispatcher: CommandDispatcher
    mqtt: PrepaidMqtt | None
    coap: CoapCommands = field(default_factory=CoapCommands)
    sweep_s: float = 5.0

    @classmethod
    def create(cls, pool: AsyncConnectionPool, profiles: Sequence[Profile], *, mqtt_url: str | None,
               client_id: str, shared: bool) -> PrepaidRuntime:
        """Everything wired, nothing started; ``shared``: hubs share the request topics ($share)."""
        service = PrepaidService(pool, pricer_for(pool))
        mqtt = None
        if mqtt_url:
            config = MqttConfig(url=mqtt_url, client_id=client_id, protocol="5" if shared else "3.1.1")
            mqtt = PrepaidMqtt(config, service, PrepaidMqttSettings(share_group="usagehub-prepaid" if shared else None))
        coap = CoapCommands()
        dispatcher = CommandDispatcher(pool, profiles, mqtt.publish if mqtt else None, coap)
        events = PrepaidEventHub(str(pool.conninfo))
        events.handlers.append(dispatcher.on_event)
        return cls(service=service, events=events, dispatcher=dispatcher, mqtt=mqtt, coap=coap)

    def start(self) -> list[asyncio.Task[None]]:
        """Start listening, answering devices and sweeping; cancel the tasks to stop."""
        tasks = [asyncio.create_task(self.events.run(), name="prepaid-events"),
                 asyncio.create_task(self._sweep(), name="prepaid-sweep")]
        if self.mqtt is not None:
            tasks.append(asyncio.create_task(self.mqtt.run(), name="prepaid-mqtt"))
        return tasks

    async def _sweep(self) -> None:
        """Release expired reservations and send commands left unsent, every few seconds."""
        try:
            while True:
                await asyncio.sleep(self.sweep_s)
                try:
                    await self.service.sweep()
                    await self.dispatcher.sweep()
                except Exception:  # retried next round; authorizations expire lazily meanwhile
                    log.exception("prepaid sweep failed")
        finally:
            await self.service.close()
            await self.coap.close()

    def services(self) -> dict[str, Any]:
        """What the GraphQL context needs (``Services.prepaid`` and ``extra``)."""
        return {"prepaid": self.service, "extra": {"prepaid_events": self.events}}
