"""The HTTP ingest endpoint as a standalone adapter: its own uvicorn server on its own port."""

from __future__ import annotations

import asyncio
import logging
import socket
from types import TracebackType
from typing import Self

import uvicorn
from starlette.applications import Starlette

from usagehub.adapters.base import AdapterSettings, Sink
from usagehub.adapters.http.config import HttpConfig
from usagehub.adapters.http.routes import ingest_routes
from usagehub.adapters.http.slow import deadline_protocol
from usagehub.errors import PermanentAdapterError

log = logging.getLogger(__name__)


def ingest_app(sink: Sink, settings: AdapterSettings, config: HttpConfig) -> Starlette:
    """A Starlette app serving only the ingest route."""
    return Starlette(routes=ingest_routes(sink, settings.devices, config, settings.profiles))


class HttpAdapter:
    """Binds the port on enter (so a busy port fails at start); ``run(sink)`` serves until cancelled."""

    def __init__(self, config: HttpConfig, settings: AdapterSettings) -> None:
        self.config, self.settings = config, settings
        self._socket: socket.socket | None = None
        self.server: uvicorn.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with ``port: 0``)."""
        assert self._socket is not None, "enter the adapter first"
        return int(self._socket.getsockname()[1])

    async def __aenter__(self) -> Self:
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.config.host, self.config.port))
            sock.listen(512)
        except OSError as err:
            sock.close()
            raise PermanentAdapterError(
                f"cannot bind HTTP ingest on {self.config.host}:{self.config.port}: {err}") from err
        sock.setblocking(False)
        self._socket = sock
        log.info("HTTP ingest listening on %s:%d%s", self.config.host, self.port, self.config.path)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def run(self, sink: Sink) -> None:
        """Serve ``POST <path>`` through ``sink`` until cancelled, then shut down gracefully."""
        assert self._socket is not None, "enter the adapter first"
        app = ingest_app(sink, self.settings, self.config)
        server = uvicorn.Server(uvicorn.Config(
            app, lifespan="off", log_level="warning", access_log=False,
            http=deadline_protocol(header_timeout_s=self.config.header_timeout_s,
                                   body_timeout_s=self.config.body_timeout_s,
                                   max_connections=self.config.max_connections)))
        self.server = server
        serving = asyncio.create_task(server.serve(sockets=[self._socket]), name="http-ingest")
        try:
            await asyncio.shield(serving)
        except asyncio.CancelledError:
            server.should_exit = True
            await serving
            raise
