"""Prepaid request/response over MQTT, and the publisher of block/restore commands.

A device publishes ``{prefix}/{device_id}/{authorize|commit|release}`` with a JSON
request (``usagehub.adapters.prepaid_port``) and gets the answer on
``{prefix}/{device_id}/response`` — or, under MQTT 5, on the request's Response
Topic with its Correlation Data. The device id comes from the topic, which the
broker's per-device ACL protects. Several hubs on one broker share the request
topics (``$share/{group}/...``), so each request is answered once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiomqtt
import orjson
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from usagehub import metrics
from usagehub.adapters.link import Link
from usagehub.adapters.mqtt import lean
from usagehub.adapters.mqtt.config import MqttConfig
from usagehub.adapters.prepaid_port import OPERATIONS, PrepaidPort, handle

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class PrepaidMqttSettings:
    """Where the prepaid topics live and whether hubs share them."""

    prefix: str = "prepaid"
    share_group: str | None = "usagehub-prepaid"  # None: a plain subscription (brokers without $share)
    max_in_flight: int = 2000
    answer_qos: int = 1  # a device that misses an answer asks again with the same request id


class PrepaidMqtt:
    """Answers device prepaid requests and publishes device commands on one connection."""

    def __init__(self, config: MqttConfig, port: PrepaidPort, settings: PrepaidMqttSettings | None = None) -> None:
        self.config, self.port = config, port
        self.settings = settings or PrepaidMqttSettings()
        self.client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.link = Link("mqtt-prepaid", max_delay_s=config.reconnect_max_s)
        self.answered = 0
        self._slots = asyncio.Semaphore(self.settings.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()

    def filters(self) -> list[str]:
        """The subscriptions: one per operation."""
        share = f"$share/{self.settings.share_group}/" if self.settings.share_group else ""
        return [f"{share}{self.settings.prefix}/+/{op}" for op in OPERATIONS]

    def _client(self) -> aiomqtt.Client:
        lean.install()
        v5 = self.config.protocol == "5"
        client = aiomqtt.Client(
            self.config.host, self.config.port, username=self.config.username, password=self.config.password,
            identifier=f"{self.config.client_id}-prepaid-{uuid.uuid4().hex[:8]}",
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            keepalive=self.config.keepalive_s, tls_params=aiomqtt.TLSParameters() if self.config.tls else None,
            # paho holds QoS 1 publishes beyond 20 in flight until a later loop pass: ~90 ms per answer under load
            max_inflight_messages=self.settings.max_in_flight)
        lean.lean_client(client._client)
        return client

    async def run(self) -> None:
        """Serve until cancelled; any lost connection is retried with jittered backoff."""
        try:
            while True:
                try:
                    await self._session()
                    err: BaseException = ConnectionError("the session ended")
                except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
                    err = exc
                self.connected.clear()
                self.client = None
                await asyncio.sleep(self.link.lost(err))
        finally:
            self.connected.clear()
            self.link.down()

    async def _session(self) -> None:
        async with self._client() as client:
            await client.subscribe([(f, 1) for f in self.filters()])
            self.client = client
            self.connected.set()
            self.link.connected(f"{self.config.host}:{self.config.port}, answering {', '.join(self.filters())}")
            async for message in lean.messages(client):
                await self._slots.acquire()  # bounded concurrency: a flood cannot exhaust memory
                task = asyncio.create_task(self._answer(client, message, time.perf_counter()))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _answer(self, client: aiomqtt.Client, message: aiomqtt.Message, received: float) -> None:
        try:
            parts = message.topic.value.split("/")
            if len(parts) < 3:
                return
            device_id, operation = parts[-2], parts[-1]
            try:
                doc: Any = orjson.loads(message.payload if isinstance(message.payload, bytes) else b"")
            except orjson.JSONDecodeError:
                doc = None
            answer = await handle(self.port, operation, device_id, doc)
            metrics.PREPAID_DECIDE_SECONDS.observe(time.perf_counter() - received)
            topic, props = self._reply_to(message, device_id)
            await client.publish(topic, orjson.dumps(answer), qos=self.settings.answer_qos, properties=props)
            metrics.PREPAID_ANSWER_SECONDS.observe(time.perf_counter() - received)
            self.answered += 1
        except aiomqtt.MqttError:
            pass  # the connection is gone; the device retries with the same request id
        except Exception:  # one bad request must not stop the others
            log.exception("prepaid request on %s failed", message.topic.value)
        finally:
            self._slots.release()

    def _reply_to(self, message: aiomqtt.Message, device_id: str) -> tuple[str, Properties | None]:
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        if not response_topic:
            return f"{self.settings.prefix}/{device_id}/response", None
        out = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        correlation = getattr(props, "CorrelationData", None)
        if correlation is not None:
            out.CorrelationData = correlation
        return str(response_topic), out

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish a device command (QoS 1); raises if not connected."""
        client = self.client
        if client is None:
            raise ConnectionError("prepaid mqtt client is not connected")
        await client.publish(topic, payload, qos=1)
