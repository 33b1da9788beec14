"""Sparkplug B host adapter: follows edge-node sessions, resolves aliases, requests rebirths over MQTT."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt

from usagehub.adapters.base import AdapterSettings, Sink
from usagehub.adapters.mqtt import fastpath
from usagehub.adapters.mqtt.ack import ManualAck
from usagehub.adapters.mqtt.adapter import MqttAdapter, _ack_when_stored
from usagehub.adapters.mqtt.backpressure import ReadPause
from usagehub.adapters.sparkplug.config import SparkplugConfig
from usagehub.core.codecs.sparkplug_session import NAMESPACE, SparkplugSessions, Verdict, parse_topic, rebirth_command
from usagehub.core.events import RawMessage
from usagehub.errors import DecodeError
from usagehub.metrics import SPARKPLUG_REBIRTHS

log = logging.getLogger(__name__)


class SparkplugAdapter(MqttAdapter):
    """The MQTT adapter's connection handling with a Sparkplug B host application in front of the sink."""

    link_name = "sparkplug"

    def __init__(self, config: SparkplugConfig, settings: AdapterSettings) -> None:
        super().__init__(config, settings)
        self.sparkplug = config
        self.topics = config.topics or [f"{NAMESPACE}/{group}/#" for group in config.groups]
        self.state_path = Path(settings.data_dir) / config.state_file
        self.sessions = self._load_state()

    def _load_state(self) -> SparkplugSessions:
        interval = int(self.sparkplug.rebirth_interval_s * 1000)
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return SparkplugSessions(rebirth_interval_ms=interval)
        except (OSError, ValueError) as err:
            log.warning("sparkplug state %s unreadable (%s); starting without aliases", self.state_path, err)
            return SparkplugSessions(rebirth_interval_ms=interval)
        return SparkplugSessions.from_json(state if isinstance(state, dict) else {}, rebirth_interval_ms=interval)

    def save_state(self) -> None:
        """Write aliases and sessions atomically (a crash leaves the previous file)."""
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.sessions.to_json()))
        os.replace(tmp, self.state_path)

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.save_state()
        await super().__aexit__(None, None, None)

    async def _pump(self, client: aiomqtt.Client, acks: ManualAck, sink: Sink,
                    pause: ReadPause | None = None) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            if pause is not None:  # the MQTT adapter's read-ahead bound (adapters/mqtt/backpressure.py)
                pause.taken(len(payload) + 8)
            topic = fastpath.topic_of(message)  # the MQTT fast path hands a plain str
            verdict = await self._apply(client, topic, payload)
            if verdict is None:
                if message.qos:
                    acks.ack(message)
                continue
            raw = RawMessage(transport="sparkplug", topic=topic, payload=verdict, received_at=datetime.now(UTC))
            future = await sink.submit(raw)
            if message.qos:
                future.add_done_callback(functools.partial(_ack_when_stored, acks, message))

    async def _apply(self, client: aiomqtt.Client, topic: str, payload: bytes) -> bytes | None:
        """The bytes to submit for one message (None: nothing to store), after the session rules."""
        try:
            parsed = parse_topic(topic)
        except DecodeError:
            return None  # STATE and other host traffic: not device data
        try:
            verdict: Verdict = self.sessions.receive(parsed, payload, int(time.time() * 1000))
        except DecodeError:
            return payload  # not protobuf: the pipeline quarantines the bytes with the reason
        if verdict.rebirth:
            SPARKPLUG_REBIRTHS.labels(reason=(verdict.reason or "").split(":")[0][:40]).inc()
            await client.publish(f"{NAMESPACE}/{parsed.group}/NCMD/{parsed.edge}",
                                 rebirth_command(int(time.time() * 1000)), qos=0)
        if parsed.kind in ("NBIRTH", "DBIRTH", "NDEATH", "DDEATH"):
            self.save_state()
        if parsed.device is None and not self.sparkplug.forward_node_messages:
            return None  # node metrics (bdSeq, Node Control/*) are session bookkeeping, not usage
        return verdict.payload
