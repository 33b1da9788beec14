"""The CoAP ingest server (aiocoap over UDP): OSCORE-protected or, where a profile allows, plain."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiocoap
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

from usagehub.adapters.base import AdapterSettings, Sink
from usagehub.adapters.coap.config import CoapConfig
from usagehub.adapters.coap.prepaid import prepaid_site
from usagehub.adapters.coap.resource import IngestResource
from usagehub.adapters.coap.routing import Router
from usagehub.adapters.coap.security import DeviceCredentials
from usagehub.errors import PermanentAdapterError

log = logging.getLogger(__name__)


class CoapAdapter:
    """Binds the CoAP port on enter; ``run(sink)`` serves and refreshes device keys until cancelled."""

    def __init__(self, config: CoapConfig, settings: AdapterSettings) -> None:
        self.config, self.settings = config, settings
        self.router = Router(settings.profiles, "coap")
        self.resource = IngestResource(config, self.router, settings.devices)
        self.site = prepaid_site(self.resource, settings.prepaid, settings.devices, settings.profiles)
        state_dir = Path(config.state_dir) if config.state_dir else settings.data_dir / "coap" / "oscore"
        self.credentials = DeviceCredentials(state_dir) if config.oscore else None
        self._context: aiocoap.Context | None = None

    async def __aenter__(self) -> Self:
        site: Any = self.site
        if self.credentials is not None:
            await self.refresh_credentials()
            site = OscoreSiteWrapper(self.resource, self.credentials)
        try:
            self._context = await aiocoap.Context.create_server_context(
                site, bind=(self.config.host, self.config.port), transports=["udp6"])
        except OSError as err:
            self._close_credentials()
            raise PermanentAdapterError(
                f"cannot bind CoAP on [{self.config.host}]:{self.config.port}: {err}") from err
        log.info("CoAP listening on [%s]:%d (OSCORE %s, %d keyed devices)", self.config.host,
                 self.config.port, "on" if self.credentials is not None else "off",
                 len(self.credentials) if self.credentials is not None else 0)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.resource.sink = None
        if self._context is not None:
            await self._context.shutdown()
            self._context = None
        self._close_credentials()

    def _close_credentials(self) -> None:
        if self.credentials is not None:
            self.credentials.close()

    async def refresh_credentials(self) -> None:
        """Re-read per-device OSCORE keys from the registry."""
        if self.credentials is not None:
            self.credentials.load(await self.settings.devices.endpoints())

    async def run(self, sink: Sink) -> None:
        """Answer requests through ``sink`` until cancelled."""
        self.resource.sink = sink
        try:
            while True:
                await asyncio.sleep(self.config.credentials_refresh_s)
                await self.refresh_credentials()
        finally:
            self.resource.sink = None
