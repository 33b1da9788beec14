"""Operations in a running hub: the alert service and feed, the silent-device sweep, the console routes."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from psycopg_pool import AsyncConnectionPool
from starlette.routing import BaseRoute

from usagehub.core.decode import ProfileSet
from usagehub.core.profiles import Profile
from usagehub.graphql.context import Services
from usagehub.operations.consumer import ConsumerService
from usagehub.operations.feed import AlertFeed
from usagehub.operations.profiles import ProfileCatalog
from usagehub.operations.service import OperationsService
from usagehub.storage.keys import ApiKeys
from usagehub.web.console import console_routes
from usagehub.web.me import me_routes

log = logging.getLogger(__name__)


async def sweep_silent(service: OperationsService, *, every_s: float = 60.0) -> None:
    """Raise "silent" and "quarantine_burst" alerts once a minute; a failed round retries next minute."""
    while True:
        try:
            raised = await service.sweep_silent() + await service.sweep_bursts()
            if raised:
                log.info("%d new silence or quarantine-burst alerts", raised)
        except Exception:
            log.exception("silent-device sweep failed")
        await asyncio.sleep(every_s)


async def wire_operations(pool: AsyncConnectionPool, profiles: ProfileSet, services: Services, keys: ApiKeys,
                          folder: Path, files: list[Profile]) -> tuple[list[BaseRoute], list[asyncio.Task[None]]]:
    """Register the operations services with the API; return the console and /me routes and the tasks.

    Stored meter types are put in force before this returns (the hub decodes with them from the start).
    """
    catalog = ProfileCatalog(pool, profiles, folder, files)
    await catalog.load()
    services.extra["profile_catalog"] = catalog
    service = OperationsService(pool, profiles)
    feed = AlertFeed(str(pool.conninfo), pool)
    services.extra["operations"] = service
    services.extra["alert_feed"] = feed
    consumers = ConsumerService(pool)
    services.extra["consumers"] = consumers
    tasks = [asyncio.create_task(feed.run(), name="alert-feed"),
             asyncio.create_task(catalog.listen(), name="meter-types"),
             asyncio.create_task(sweep_silent(service), name="silent-sweep")]
    return [*console_routes(service, keys), *me_routes(consumers)], tasks
