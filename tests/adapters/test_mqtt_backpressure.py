"""The MQTT adapter stops reading while received messages wait, and loses nothing (against Mosquitto)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import uuid
from collections.abc import Callable
from pathlib import Path

import aiomqtt

from tests.conftest import Mosquitto
from usagehub import metrics
from usagehub.adapters.base import AdapterSettings
from usagehub.adapters.mqtt.adapter import MqttAdapter
from usagehub.adapters.mqtt.config import MqttConfig
from usagehub.core.events import RawMessage


class _SlowSink:
    """A pipeline that commits one message per event-loop pass at most (a hub behind its broker)."""

    def __init__(self, adapter: MqttAdapter) -> None:
        self.adapter = adapter
        self.got: list[bytes] = []
        self.most_waiting = 0
        self.done = asyncio.Event()
        self.expected = 0

    async def offer(self, message: RawMessage, stored: Callable[[], None] | None) -> None:
        client = self.adapter.client
        if client is not None:
            self.most_waiting = max(self.most_waiting, client._queue.qsize())
        await asyncio.sleep(0.0005)
        self.got.append(message.payload)
        if stored is not None:
            stored()
        if len(self.got) >= self.expected:
            self.done.set()

    def offer_nowait(self, message: RawMessage, stored: Callable[[], None] | None) -> bool:
        return False  # a slow consumer: every message waits in offer()

    async def submit(self, message: RawMessage) -> asyncio.Future[object]:
        raise AssertionError("the MQTT adapter offers")


async def _run(port: int, client_id: str, n: int, seconds: float = 60, **limits: int) -> _SlowSink:
    config = MqttConfig(url=f"mqtt://127.0.0.1:{port}", client_id=client_id, topics=["bp/#"], **limits)
    adapter = MqttAdapter(config, AdapterSettings(profiles=[], devices=None, data_dir=Path(".")))  # type: ignore[arg-type]
    sink = _SlowSink(adapter)
    sink.expected = n
    task = asyncio.create_task(adapter.run(sink))  # type: ignore[arg-type]
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await sink.done.wait()
        await asyncio.sleep(0.5)  # the acks of the last pass leave
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return sink


async def test_reading_pauses_while_messages_wait_and_nothing_is_lost(mosquitto: Mosquitto) -> None:
    client_id = f"bp-{uuid.uuid4().hex[:6]}"
    await _run(mosquitto.port, client_id, 1, seconds=2)  # the persistent session exists
    body = b"x" * 300  # about 200 messages per 64 KB read
    n = 3000
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier=f"{client_id}-pub") as pub:
        for i in range(n):
            await pub.publish(f"bp/m{i % 5}", b"%05d" % i + body, qos=1)
    pauses = metrics.ADAPTER_READ_PAUSES.labels("mqtt")._value.get()
    sink = await _run(mosquitto.port, client_id, n, read_ahead_messages=200)
    assert [p[:5] for p in sink.got] == [b"%05d" % i for i in range(n)]  # once each, in order
    assert metrics.ADAPTER_READ_PAUSES.labels("mqtt")._value.get() > pauses
    # what waits is bounded by the read-ahead plus what one read pass of 64 KB parses
    assert sink.most_waiting <= 200 + 64 * 1024 // 300
    again = await _run(mosquitto.port, client_id, 1, seconds=3)  # everything was acknowledged
    assert again.got == []



class _Link:
    """A TCP relay to the broker that can reset the client's connection (a broker or a link that died)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.clients: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients.append(writer)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    def reset(self) -> None:
        """RST every client connection: the client learns of it at its next read or write."""
        for writer in self.clients:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()


class _StuckSink(_SlowSink):
    """A pipeline that takes a few messages and then never commits again (its queue full)."""

    async def offer(self, message: RawMessage, stored: Callable[[], None] | None) -> None:
        self.got.append(message.payload)
        if len(self.got) >= 5:
            await asyncio.Event().wait()


async def test_a_cancel_while_paused_after_the_broker_went_ends_the_adapter(mosquitto: Mosquitto) -> None:
    """A hub stopped after its broker went while reading was paused: the disconnect at the cancel fails (the
    paused socket never saw the reset), and that failure must not pass for a lost connection to reconnect
    from; the adapter ends (a soak's hub ignored SIGTERM for minutes, reconnecting to a dead broker)."""
    client_id = f"bp-{uuid.uuid4().hex[:6]}"
    await _run(mosquitto.port, client_id, 1, seconds=2)  # the persistent session exists
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier=f"{client_id}-pub") as pub:
        for i in range(2000):
            await pub.publish(f"bp/m{i % 5}", b"%05d" % i + b"x" * 300, qos=1)
    link = _Link(mosquitto.port)
    async with link as port:
        config = MqttConfig(url=f"mqtt://127.0.0.1:{port}", client_id=client_id, topics=["bp/#"],
                            read_ahead_messages=100)
        adapter = MqttAdapter(config, AdapterSettings(profiles=[], devices=None, data_dir=Path(".")))  # type: ignore[arg-type]
        sink = _StuckSink(adapter)
        pauses = metrics.ADAPTER_READ_PAUSES.labels("mqtt")._value.get()
        task = asyncio.create_task(adapter.run(sink))  # type: ignore[arg-type]
        try:
            async with asyncio.timeout(30):
                while metrics.ADAPTER_READ_PAUSES.labels("mqtt")._value.get() == pauses:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            link.reset()
            await asyncio.sleep(0.2)
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=15)
            assert done, "the adapter kept running after its cancel"
            assert task.cancelled()
        finally:
            task.cancel()
