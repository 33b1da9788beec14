"""TCP and UDP listeners that frame legacy binary streams and submit each frame as a RawMessage."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Self, cast

from usagehub.adapters.base import AdapterSettings, Receipt, Sink
from usagehub.adapters.binary.config import BinaryConfig, ListenerConfig
from usagehub.adapters.binary.framing import FramingSpec, default_framing, make_framer
from usagehub.adapters.binary.replies import Dc09Replier
from usagehub.adapters.ratelimit import SourceLimiter
from usagehub.core.codecs import get_codec
from usagehub.core.events import RawMessage
from usagehub.core.profiles import Profile
from usagehub.errors import AdapterError, ConfigError, PermanentAdapterError
from usagehub.metrics import DOOR_DROPPED

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Listener:
    config: ListenerConfig
    profile: Profile
    framing: FramingSpec
    replier: Dc09Replier | None


def _prepare(config: ListenerConfig, profiles: dict[str, Profile]) -> _Listener:
    profile = profiles.get(config.profile)
    if profile is None:
        raise ConfigError(
            f"listener on port {config.port} names unknown profile {config.profile!r}",
            field="adapters.binary.listeners",
        )
    framing = config.framing or default_framing(profile.decode)
    if framing is None:
        raise ConfigError(
            f"profile {profile.id!r} needs decode.framing (or the listener's framing)",
            field="adapters.binary.listeners",
        )
    replier = None
    if profile.decode_type == "dc09":
        codec = get_codec("dc09")
        options = codec.options_model.model_validate(profile.decode)
        replier = Dc09Replier(
            codec.compile(options),
            dict(profile.decode.get("keys", {})),
            bool(profile.decode.get("strict", True)),
        )
    return _Listener(config, profile, framing, replier)


class BinaryAdapter:
    """Listens on every configured socket until cancelled; a bad frame never closes a connection."""

    def __init__(self, config: BinaryConfig, settings: AdapterSettings) -> None:
        profiles = {p.id: p for p in settings.profiles}
        self._listeners = [_prepare(c, profiles) for c in config.listeners]
        self._config = config
        self._servers: list[asyncio.Server] = []
        self._transports: list[asyncio.DatagramTransport] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._sink: Sink | None = None
        self._open_connections: dict[str, int] = {}  # per source address
        self._open_total = 0
        self._udp_limiter = SourceLimiter(config.udp_rate_limit)
        self._udp_inflight = 0
        self.ready = asyncio.Event()  # set while every listener is bound and served
        self._closing = False
        self._lost: asyncio.Future[None] | None = None  # fails when a listener's socket is lost
        self.bound: list[int] = []  # bound ports in listener order (differ from the config when it says 0)

    async def __aenter__(self) -> Self:
        """Bind every listener (a busy port fails the start, naming it); serving starts in ``run``."""
        try:
            for i, listener in enumerate(self._listeners):
                await self._open(listener, i)
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def run(self, sink: Sink) -> None:
        """Serve every bound listener until cancelled; raises when a listener's socket is lost."""
        self._sink = sink
        try:
            for server in self._servers:
                await server.start_serving()
            log.info("binary adapter listening on %s", self.bound)
            self.ready.set()
            assert self._lost is not None, "enter the adapter first"
            await asyncio.shield(self._lost)  # a listener that closes by itself ends run with its error
        finally:
            self.ready.clear()

    def listener_lost(self, port: int, exc: BaseException | None) -> None:
        """A socket closed that we did not close: ``run`` fails, the hub rebinds it (``adapters/link.py``)."""
        if not self._closing and self._lost is not None and not self._lost.done():
            self._lost.set_exception(AdapterError(f"binary listener on port {port} closed"
                                                  + (f": {exc}" if exc else "")))

    async def _open(self, listener: _Listener, index: int) -> None:
        cfg = listener.config
        loop = asyncio.get_running_loop()
        self._closing = False
        if self._lost is None or self._lost.done():
            self._lost = loop.create_future()
        # A port given as 0 keeps the port first bound, so a rebind does not move the listener.
        port = cfg.port or (self.bound[index] if index < len(self.bound) else 0)
        try:
            if cfg.protocol == "tcp":
                server = await asyncio.start_server(
                    lambda r, w: self._connection(listener, r, w), cfg.host, port, start_serving=False
                )
                self._servers.append(server)
                bound = int(server.sockets[0].getsockname()[1])
            else:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Udp(self, listener), local_addr=(cfg.host, port)
                )
                self._transports.append(transport)
                bound = int(transport.get_extra_info("sockname")[1])
        except OSError as err:
            raise PermanentAdapterError(
                f"cannot bind the binary {cfg.protocol.upper()} listener on {cfg.host}:{port}: "
                f"{err.strerror or err}; change adapters.binary.listeners[{index}].port"
            ) from err
        if index < len(self.bound):
            self.bound[index] = bound
        else:
            self.bound.append(bound)

    async def _close(self) -> None:
        self._closing = True
        for server in self._servers:
            server.close()
        for transport in self._transports:
            transport.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers, self._transports = [], []

    async def _connection(
        self, listener: _Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        source = f"{peer[0]}:{peer[1]}" if peer else ""
        host = str(peer[0]) if peer else ""
        refusal = None
        if self._open_total >= self._config.max_connections:
            refusal = "connection cap"
        elif self._open_connections.get(host, 0) >= self._config.max_connections_per_source:
            refusal = "per-source connection cap"
        if refusal is not None:  # close at once: a connection beyond the cap must not wait unbounded
            DOOR_DROPPED.labels("binary-tcp", refusal).inc()
            writer.close()
            return
        self._open_connections[host] = self._open_connections.get(host, 0) + 1
        self._open_total += 1
        framer = make_framer(listener.framing)
        try:
            try:
                while True:
                    async with asyncio.timeout(self._config.idle_timeout_s):
                        data = await reader.read(65536)
                    if not data:
                        break
                    for frame in framer.feed(data):
                        reply = await self.handle(listener, frame, source)
                        if reply:
                            writer.write(reply)
                            await writer.drain()
                rest = framer.flush()
                if rest.strip():
                    await self.handle(listener, rest, source)
            except TimeoutError:
                DOOR_DROPPED.labels("binary-tcp", "idle timeout").inc()
            except ConnectionError:
                pass
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()
        finally:
            self._open_total -= 1
            left = self._open_connections.pop(host, 1) - 1
            if left > 0:
                self._open_connections[host] = left

    async def handle(self, listener: _Listener, frame: bytes, source: str) -> bytes | None:
        """Submit one frame, wait for its durable receipt, and return the reply to send (if any)."""
        assert self._sink is not None
        topic = listener.profile.id
        message = RawMessage(
            transport="binary",
            topic=topic,
            payload=frame,
            received_at=datetime.now(UTC),
            source=source,
            meta={"profile": topic, "port": str(listener.config.port)},
        )
        receipt: Receipt | None = None
        try:
            receipt = await (await self._sink.submit(message))
        except Exception:
            log.warning("binary frame from %s not stored", source, exc_info=True)
        if listener.replier is None:
            return None
        return listener.replier.reply(frame, receipt, datetime.now(UTC), secrets.token_hex(8))

    def _spawn(self, coro: asyncio.Future[None] | asyncio.Task[None] | object) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Udp(asyncio.DatagramProtocol):
    """One datagram is one or more frames of the listener's framing; replies go back to the sender."""

    def __init__(self, adapter: BinaryAdapter, listener: _Listener) -> None:
        self.adapter, self.listener = adapter, listener
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        port = self.transport.get_extra_info("sockname")[1] if self.transport is not None else self.listener.config.port
        self.adapter.listener_lost(int(port), exc)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        adapter = self.adapter
        if adapter._sink is None:  # bound but not serving yet (or any more)
            DOOR_DROPPED.labels("binary-udp", "not serving").inc()
            return
        # Bounded work per datagram: a source over its rate, or any datagram while the in-flight
        # limit is reached, is dropped and counted (a UDP sender retries or loses it anyway).
        if not adapter._udp_limiter.allow(str(addr[0])):
            DOOR_DROPPED.labels("binary-udp", "rate limited").inc()
            return
        if adapter._udp_inflight >= adapter._config.udp_max_inflight:
            DOOR_DROPPED.labels("binary-udp", "overload").inc()
            return
        adapter._udp_inflight += 1
        adapter._spawn(self._handle(data, addr))

    async def _handle(self, data: bytes, addr: tuple[str | object, int]) -> None:
        try:
            framer = make_framer(self.listener.framing)
            frames = framer.feed(data)
            rest = framer.flush()
            if rest.strip():
                frames.append(rest)
            for n, frame in enumerate(frames):
                # Each frame costs a token (the datagram paid for the first): 1,400 random bytes cut into
                # 40-byte frames must not become 35 quarantine rows for the price of one.
                if n and not self.adapter._udp_limiter.allow(str(addr[0])):
                    DOOR_DROPPED.labels("binary-udp", "rate limited").inc()
                    continue
                reply = await self.adapter.handle(self.listener, frame, f"{addr[0]}:{addr[1]}")
                if reply and self.transport is not None:
                    self.transport.sendto(reply, addr)
        finally:
            self.adapter._udp_inflight -= 1
