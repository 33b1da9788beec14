"""Prepaid request/response over MQTT, and the publisher of block/restore commands.

A device publishes ``{prefix}/{device_id}/{authorize|commit|release}`` with a JSON
request (``usagehub.adapters.prepaid_port``) and gets the answer on
``{prefix}/{device_id}/response`` — or, under MQTT 5, on the request's Response
Topic with its Correlation Data. The device id comes from the topic, which the
broker's per-device ACL protects. Several hubs on one broker share the request
topics (``$share/{group}/...``), so each request is answered once.

Three parts, so none waits behind another (docs/prepaid.md, "Device side"):

- the **receiver** (one connection) parses each request as it arrives — a malformed
  one is refused with its reason at once — and queues it: no task, future or
  answer object per message; PUBLISH packets are read by the ingest fast path
  (``fastpath.py``), except MQTT 5 requests with properties (a Response Topic),
  which paho decodes;
- the **decider** hands everything queued to the port in one call (one transaction
  for all of them, when the port can batch), acknowledges those requests to the
  broker (manual PUBACK) after that commit, and queues the answers;
- the **publisher** (its own connection) writes the answers and the device
  commands; paho keeps QoS 1 answers in flight without a wait per answer (a device
  that misses one asks again with the same request id and gets the same answer).
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
from usagehub.adapters.mqtt import fastpath, lean, prepaid_stages
from usagehub.adapters.mqtt.ack import ManualAck
from usagehub.adapters.mqtt.coalesce import coalesce_writes
from usagehub.adapters.mqtt.config import MqttConfig
from usagehub.adapters.prepaid_port import (
    OPERATIONS,
    BadRequest,
    CommitRequest,
    DeviceRequest,
    PrepaidPort,
    answer_doc,
    parse,
    refusal_doc,
    request_id,
)
from usagehub.core.prepaid import AuthRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class PrepaidMqttSettings:
    """Where the prepaid topics live and whether hubs share them."""

    prefix: str = "prepaid"
    share_group: str | None = "usagehub-prepaid"  # None: a plain subscription (brokers without $share)
    max_in_flight: int = 2000  # requests received and not yet answered; the receiver waits beyond it
    batch_max: int = 500  # requests handed to the port in one call
    decisions_in_flight: int = 1  # calls to the port at once (the service runs two transactions at once)
    answer_qos: int = 1  # a device that misses an answer asks again with the same request id


_Message = aiomqtt.Message | fastpath.Received
# A request waiting for its decision: (message, request id to echo, request, received at, queued at).
_Pending = tuple[_Message, "str | int | None", DeviceRequest, float, float]
# An answer waiting for the publisher: (topic, payload, MQTT 5 properties, received at, stage marks or None).
_Answer = tuple[str, bytes, "Properties | None", float, "tuple[float, ...] | None"]


class PrepaidMqtt:
    """Answers device prepaid requests (receiver, decider, publisher) and publishes device commands."""

    def __init__(self, config: MqttConfig, port: PrepaidPort, settings: PrepaidMqttSettings | None = None) -> None:
        self.config, self.port = config, port
        self.settings = settings or PrepaidMqttSettings()
        self.client: aiomqtt.Client | None = None  # the publishing connection (answers and commands)
        self.connected = asyncio.Event()
        self.link = Link("mqtt-prepaid", max_delay_s=config.reconnect_max_s)
        self.answered = 0
        self.refused = 0  # malformed requests, answered BAD_REQUEST
        self._pending: list[_Pending] = []
        self._arrived = asyncio.Event()
        self._answers: asyncio.Queue[_Answer] = asyncio.Queue()
        self._room = asyncio.Semaphore(self.settings.max_in_flight)
        self.stages = prepaid_stages.from_environment()  # bench only: where a request waits

    def filters(self) -> list[str]:
        """The subscriptions: one per operation."""
        share = f"$share/{self.settings.share_group}/" if self.settings.share_group else ""
        return [f"{share}{self.settings.prefix}/+/{op}" for op in OPERATIONS]

    def _client(self, role: str) -> aiomqtt.Client:
        lean.install()
        v5 = self.config.protocol == "5"
        client = aiomqtt.Client(
            self.config.host, self.config.port, username=self.config.username, password=self.config.password,
            identifier=f"{self.config.client_id}-prepaid-{role}-{uuid.uuid4().hex[:8]}",
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            keepalive=self.config.keepalive_s, tls_params=aiomqtt.TLSParameters() if self.config.tls else None,
            # paho holds QoS 1 publishes beyond 20 in flight until a later loop pass: ~90 ms per answer under load
            max_inflight_messages=self.settings.max_in_flight)
        lean.lean_client(client._client)
        return client

    async def run(self) -> None:
        """Serve until cancelled; any lost connection is retried with jittered backoff."""
        if self.stages is not None:
            self.stages.listen()
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
            if self.stages is not None:
                self.stages.unlisten()

    async def _session(self) -> None:
        receiving, publishing = self._client("rx"), self._client("tx")
        acks = ManualAck(receiving)
        # Requests of an earlier connection are never acked on this one (message ids are per connection):
        # the broker redelivers them, and their request ids make the answers the same.
        self._pending, self._arrived = [], asyncio.Event()
        self._room = asyncio.Semaphore(self.settings.max_in_flight)
        async with receiving, publishing:
            for client in (receiving, publishing):
                lean.buffer_reads(client)
                coalesce_writes(client)  # a loop pass's acks (or answers) leave in one send
            fastpath.install(receiving, properties_to_paho=True)  # else paho reads each packet, as before
            await receiving.subscribe([(f, 1) for f in self.filters()])
            self.client = publishing
            self.connected.set()
            self.link.connected(f"{self.config.host}:{self.config.port}, answering {', '.join(self.filters())}")
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._publish(publishing), name="prepaid-mqtt-publish")
                    group.create_task(self._decide(acks, group), name="prepaid-mqtt-decide")
                    await self._receive(receiving, acks)
                    raise ConnectionError("the broker ended the session")
            except ExceptionGroup as failed:  # the first failure says why the session ended
                raise failed.exceptions[0] from failed

    async def _receive(self, client: aiomqtt.Client, acks: ManualAck) -> None:
        """Parse and queue each request; refuse a malformed one at once (with its reason)."""
        for_device = self.settings.prefix
        async for message in lean.messages(client):
            received = time.perf_counter()
            parts = fastpath.topic_of(message).split("/")
            if len(parts) < 3:
                acks.ack(message)
                continue
            device_id, operation = parts[-2], parts[-1]
            try:
                doc: Any = orjson.loads(message.payload if isinstance(message.payload, bytes) else b"")
            except orjson.JSONDecodeError:
                doc = None
            req = request_id(doc)
            try:
                request = parse(operation, device_id, doc)
            except BadRequest as err:
                self.refused += 1
                self._queue_answer(message, device_id, for_device, refusal_doc(req, err), received, None)
                acks.ack(message)  # nothing to store: the refusal is the whole answer
                continue
            await self._room.acquire()  # bounded: a flood waits at the broker, not in memory
            self._pending.append((message, req, request, received, time.perf_counter()))
            self._arrived.set()

    async def _decide(self, acks: ManualAck, group: asyncio.TaskGroup) -> None:
        """Hand what queued to the port in one call (two calls in flight); ack and answer after its commit."""
        batch_max, in_flight = self.settings.batch_max, asyncio.Semaphore(self.settings.decisions_in_flight)
        while True:
            await self._arrived.wait()
            await in_flight.acquire()
            batch, self._pending = self._pending[:batch_max], self._pending[batch_max:]
            if not self._pending:
                self._arrived.clear()
            if batch:
                group.create_task(self._answer(batch, acks, in_flight))
            else:
                in_flight.release()

    async def _answer(self, batch: list[_Pending], acks: ManualAck, in_flight: asyncio.Semaphore) -> None:
        trace: list[float] | None = None if self.stages is None else [time.perf_counter()]
        try:
            results = await self._results([p[2] for p in batch], trace)
        finally:
            in_flight.release()
            for _ in batch:
                self._room.release()
        decided = time.perf_counter()
        prefix = self.settings.prefix
        full = trace is not None and len(trace) == 5  # handed, tx start, read, write, COMMIT returned
        for (message, req, request, received, queued), result in zip(batch, results, strict=True):
            metrics.PREPAID_DECIDE_SECONDS.observe(decided - received)
            if result is not None:
                acks.ack(message)  # durable now: the broker may forget the request
                marks = (queued, *trace, decided) if full and trace is not None else None
                self._queue_answer(message, request.device_id, prefix, answer_doc(req, result), received, marks)

    async def _results(self, requests: list[DeviceRequest], trace: list[float] | None = None) -> list[Any]:
        """The decisions of a batch: in one call when the port batches, else (or on failure) one by one.

        A request whose decision fails gets no answer and no ack: the broker redelivers it
        after a reconnect, and the device asks again with the same request id.
        """
        decide = getattr(self.port, "decide", None)
        if decide is not None:
            try:
                return list(await (decide(requests) if trace is None else decide(requests, trace=trace)))
            except Exception as err:  # a storage failure: try each alone, so one bad request fails alone
                log.warning("prepaid batch of %d failed (%s); deciding one by one", len(requests), err)
        out: list[Any] = []
        for request in requests:
            try:
                out.append(await self._one(request))
            except Exception:
                log.exception("prepaid request of %s failed", request.device_id)
                out.append(None)
        return out

    async def _one(self, request: DeviceRequest) -> Any:
        if isinstance(request, AuthRequest):
            return await self.port.authorize(request)
        if isinstance(request, CommitRequest):
            return await self.port.commit(request.reservation_id, request.used_units, device_id=request.device_id)
        return await self.port.release(request.reservation_id, device_id=request.device_id)

    def _queue_answer(self, message: _Message, device_id: str, prefix: str, answer: dict[str, Any],
                      received: float, marks: tuple[float, ...] | None) -> None:
        props = getattr(message, "properties", None)  # the fast path takes only packets without any
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        if not response_topic:
            self._answers.put_nowait((f"{prefix}/{device_id}/response", orjson.dumps(answer), None, received, marks))
            return
        out = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        correlation = getattr(props, "CorrelationData", None)
        if correlation is not None:
            out.CorrelationData = correlation
        self._answers.put_nowait((str(response_topic), orjson.dumps(answer), out, received, marks))

    async def _publish(self, client: aiomqtt.Client) -> None:
        """Write queued answers on the publishing connection, without a wait per answer."""
        paho, qos, answers, stages = client._client, self.settings.answer_qos, self._answers, self.stages
        while True:
            topic, payload, props, received, marks = await answers.get()
            while True:
                info = paho.publish(topic, payload, qos, False, props)
                if info.rc != 0:
                    raise aiomqtt.MqttCodeError(info.rc, "could not publish a prepaid answer")
                published = time.perf_counter()
                metrics.PREPAID_ANSWER_SECONDS.observe(published - received)
                if stages is not None and marks is not None:
                    stages.add(received, (*marks, published))
                self.answered += 1
                if answers.empty():
                    break
                topic, payload, props, received, marks = answers.get_nowait()

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish a device command (QoS 1, confirmed by the broker); raises if not connected."""
        client = self.client
        if client is None:
            raise ConnectionError("prepaid mqtt client is not connected")
        await client.publish(topic, payload, qos=1)


__all__ = ["PrepaidMqtt", "PrepaidMqttSettings"]
