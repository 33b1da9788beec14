"""The MQTT adapter stops reading while received messages wait, and loses nothing (against Mosquitto)."""

from __future__ import annotations

import asyncio
import contextlib
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
