"""Header and body deadlines for uvicorn connections, so slow clients cannot hold sockets open.

uvicorn has a keep-alive timeout but no deadline for a request that is being
received: a client sending one header byte every few seconds keeps its
connection (and a slot of ``limit_concurrency``) forever. The protocol class
here closes a connection whose request headers take longer than
``header_timeout_s`` or whose body takes longer than ``body_timeout_s``, and closes
at once a connection beyond ``max_connections`` open ones (so slow clients cannot
take every file descriptor the hub needs for its database and broker).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from usagehub.metrics import DOOR_DROPPED


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for receiving each request's headers, then its body."""

    header_timeout_s = 10.0
    body_timeout_s = 30.0
    max_connections: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float, phase: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, phase)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, phase: str) -> None:
        self._deadline = None
        if self.transport is not None and not self.transport.is_closing():
            DOOR_DROPPED.labels("http", f"slow {phase}").inc()
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the header deadline with the connection."""
        super().connection_made(transport)
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            DOOR_DROPPED.labels("http", "connection cap").inc()
            transport.close()
            return
        self._arm(self.header_timeout_s, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the deadline."""
        self._disarm()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        """Headers in time: the body gets its own deadline."""
        self._arm(self.body_timeout_s, "body")
        super().on_headers_complete()

    def handle_websocket_upgrade(self) -> None:
        """A websocket (GraphQL subscriptions) lives long: no deadline."""
        self._disarm()
        super().handle_websocket_upgrade()

    def on_message_complete(self) -> None:
        """The request is in: the application's time is not the client's."""
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        """The next request on a kept-alive connection must also arrive in time."""
        super().on_response_complete()
        if self.transport is not None and not self.transport.is_closing():
            self._arm(self.header_timeout_s, "headers")


def deadline_protocol(*, header_timeout_s: float, body_timeout_s: float,
                      max_connections: int | None = None) -> type[HttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with these deadlines and connection cap."""
    return type("DeadlineHttpProtocol", (DeadlineHttpToolsProtocol,),
                {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s,
                 "max_connections": max_connections})
