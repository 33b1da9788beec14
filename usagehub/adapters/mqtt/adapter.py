"""MQTT adapter on aiomqtt: persistent session, QoS 1, acknowledgement after commit."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import aiomqtt
from paho.mqtt import client as paho_client
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from usagehub.adapters.base import AdapterSettings, OfferSink, Receipt, Sink
from usagehub.adapters.link import Link
from usagehub.adapters.mqtt import fastpath, lean
from usagehub.adapters.mqtt.ack import ManualAck
from usagehub.adapters.mqtt.backpressure import ReadPause
from usagehub.adapters.mqtt.config import MqttConfig
from usagehub.core.events import RawMessage

log = logging.getLogger(__name__)


def profile_topics(settings: AdapterSettings) -> list[str]:
    """Subscription filters for the mqtt profiles: ``{placeholders}`` become ``+``."""
    topics = {re.sub(r"\{[a-z_]+\}", "+", p.match.topic or "#")
              for p in settings.profiles if p.match.transport == "mqtt"}
    return sorted(topics)


class MqttAdapter:
    """Subscribes to device topics and submits every message; reconnects with jittered backoff."""

    link_name = "mqtt"  # its outages in logs and /metrics (a subclass is another adapter: its own name)

    def __init__(self, config: MqttConfig, settings: AdapterSettings) -> None:
        self.config = config
        self.topics = config.topics or profile_topics(settings)
        self.connected = asyncio.Event()
        self.client: aiomqtt.Client | None = None
        self.link = Link(self.link_name, max_delay_s=config.reconnect_max_s)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.connected.clear()

    def _client(self) -> tuple[aiomqtt.Client, ManualAck]:
        lean.install()
        v5 = self.config.protocol == "5"
        props = None
        if v5:
            # Receive Maximum: how many unacknowledged QoS 1 messages the broker may
            # send us; acks wait for a commit, so a small window would stall ingest.
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.ReceiveMaximum = 65535
            props.SessionExpiryInterval = 7 * 24 * 3600
        client = aiomqtt.Client(
            self.config.host, self.config.port, username=self.config.username,
            password=self.config.password, identifier=self.config.client_id,
            clean_session=None if v5 else False,
            clean_start=False if v5 else paho_client.MQTT_CLEAN_START_FIRST_ONLY,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            keepalive=self.config.keepalive_s, properties=props,
            tls_params=aiomqtt.TLSParameters() if self.config.tls else None,
        )
        lean.lean_client(client._client)
        return client, ManualAck(client, hold_s=self.config.ack_hold_s)

    async def run(self, sink: Sink) -> None:
        """Receive until cancelled; any lost connection is retried with jittered backoff."""
        try:
            while True:
                client, acks = self._client()
                try:
                    await self._session(client, acks, sink)
                    err: BaseException = ConnectionError("the session ended")
                except aiomqtt.MqttError as exc:
                    err = exc
                except (OSError, TimeoutError) as exc:  # DNS, refused, reset: never let the adapter die
                    err = exc
                self.connected.clear()
                self.client = None
                await asyncio.sleep(self.link.lost(err))
        finally:
            self.connected.clear()
            self.link.down()

    async def _session(self, client: aiomqtt.Client, acks: ManualAck, sink: Sink) -> None:
        async with client:
            self.client = client
            pause = None
            if lean.buffer_reads(client):  # one recv serves many PUBLISH packets
                pause = ReadPause(client, high_messages=self.config.read_ahead_messages,
                                  high_bytes=self.config.read_ahead_mb << 20)  # bounded memory when behind
                if not fastpath.install(client, pause):  # ... parsed in one pass, not one by one through paho
                    pause = None
            # A resumed session may deliver a large backlog before the SUBACK:
            # consume it while subscribing, or the SUBACK waits behind it forever.
            pump = asyncio.create_task(self._pump(client, acks, sink, pause), name="mqtt-pump")
            try:
                await client.subscribe([(t, self.config.qos) for t in self.topics],
                                       timeout=self.config.subscribe_timeout_s)
                self.connected.set()
                if not self.link.is_up:
                    self.link.connected(f"{self.config.host}:{self.config.port}, subscribed to "
                                        f"{', '.join(self.topics)}")
                await pump
            finally:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)

    async def _pump(self, client: aiomqtt.Client, acks: ManualAck, sink: Sink,
                    pause: ReadPause | None = None) -> None:
        offering = sink if isinstance(sink, OfferSink) else None
        async for message in lean.messages(client):
            if pause is not None:
                pause.taken(len(message.payload) + 8)
            if not self.link.is_up:
                # A resumed session delivers its backlog before the SUBACK: its subscriptions exist already.
                self.link.connected(f"{self.config.host}:{self.config.port}, session resumed")
            payload = message.payload
            raw = RawMessage(
                transport="mqtt", topic=fastpath.topic_of(message),
                payload=payload if isinstance(payload, bytes) else str(payload).encode(),
                received_at=datetime.now(UTC),
            )
            if offering is not None:  # the pipeline: acked right after the commit, no future per message
                stored = (functools.partial(acks.ack_in_order, acks.received(message), message) if message.qos == 1
                          else functools.partial(acks.ack, message) if message.qos else None)
                if not offering.offer_nowait(raw, stored):  # the lane is full: wait for room
                    await offering.offer(raw, stored)
                del stored
            else:
                future = await sink.submit(raw)
                if message.qos:
                    future.add_done_callback(functools.partial(_ack_when_stored, acks, message))
                del future
            # While the loop waits for the next message, the last one (maybe many MB) must not stay alive here.
            del message, payload, raw


def _ack_when_stored(acks: ManualAck, message: aiomqtt.Message | fastpath.Received,
                     future: asyncio.Future[Receipt]) -> None:
    # A failed or cancelled commit is never acknowledged: the broker redelivers.
    if not future.cancelled() and future.exception() is None:
        acks.ack(message)
