"""QoS 0/1 PUBLISH packets read straight from the buffered socket, and the PUBACKs of a pass sent as one packet.

On the fleet benchmark the hub spent about 70 µs of CPU per received message on the MQTT side:
paho reads each packet with three ``recv`` calls and a dict of state, decodes it into an
``MQTTMessage`` (and two log calls), aiomqtt wraps that in a ``Message`` whose ``Topic`` is
validated, and each PUBACK after the commit is its own packet, its own queue entry and its own
``send``. For an ingest connection that only receives, none of that is needed:

- :func:`install` gives the connection's paho client a packet reader that takes every complete
  QoS 0/1 PUBLISH already in the buffer (``lean.BufferedReads``) in one pass, parses topic, packet
  id and (MQTT 5) the property length by hand, and puts a :class:`Received` on aiomqtt's own
  queue, so the adapter's loop and aiomqtt's disconnect handling are unchanged. Anything else — a
  QoS 2 PUBLISH, another packet type, a packet not yet complete, a topic alias, a topic that is not
  UTF-8 — is left to paho's reader exactly as before, one packet at a time.
- :class:`BatchedAcks` collects the packet ids acknowledged in one event-loop pass and queues
  their PUBACKs to paho as one packet (its writer sends it with one ``send``).

``tests/adapters/test_mqtt_fastpath.py`` runs it against Mosquitto and against hand-made streams
cut at every byte.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

import aiomqtt
from paho.mqtt import client as paho_client
from paho.mqtt.enums import MQTTErrorCode

from usagehub.adapters.mqtt import lean
from usagehub.adapters.mqtt.backpressure import ReadPause
from usagehub.adapters.mqtt.coalesce import CoalescedWrites

log = logging.getLogger(__name__)

_PUBLISH = 0x30
_PUBACK = 0x40


class Received:
    """A PUBLISH the fast reader took: what the adapter reads of an ``aiomqtt.Message``."""

    __slots__ = ("mid", "payload", "qos", "topic")

    def __init__(self, topic: str, payload: bytes, qos: int, mid: int) -> None:
        self.topic, self.payload, self.qos, self.mid = topic, payload, qos, mid


def topic_of(message: aiomqtt.Message | Received) -> str:
    """The topic as text, whichever reader took the message."""
    topic = message.topic
    return topic if isinstance(topic, str) else topic.value


def _varint(buf: bytearray, i: int, end: int) -> tuple[int, int] | None:
    """An MQTT variable byte integer at ``i``: (value, next index); None if incomplete or longer than 4 bytes."""
    value, shift = 0, 0
    while i < end:
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7
        if shift >= 28:
            return None
    return None


def take_publishes(buf: bytearray, v5: bool, put: Callable[[Received], None], *,
                   properties_to_paho: bool = False) -> int:
    """Hand every complete QoS 0/1 PUBLISH at the start of ``buf`` to ``put``, in order; the bytes taken.

    Stops at the first packet that is not one (or is incomplete, or is not plain UTF-8 topic text):
    the caller leaves that one to paho. MQTT 5 properties are skipped; with ``properties_to_paho`` a
    packet that has any is left to paho too (its reader decodes them: a request's Response Topic).
    """
    pos, end = 0, len(buf)
    while pos < end:
        header = buf[pos]
        qos = (header >> 1) & 0x03
        if header & 0xF0 != _PUBLISH or qos > 1:
            break
        found = _varint(buf, pos + 1, end)
        if found is None:
            break
        length, body = found
        stop = body + length
        if stop > end or length < 2:
            break
        topic_len = (buf[body] << 8) | buf[body + 1]
        i = body + 2 + topic_len
        if topic_len == 0 or i + (2 if qos else 0) > stop:
            break  # an empty topic is an alias (paho resolves it) or malformed (paho refuses it)
        try:
            topic = buf[body + 2:i].decode()
        except UnicodeDecodeError:
            break
        mid = 0
        if qos:
            mid = (buf[i] << 8) | buf[i + 1]
            i += 2
        if v5:
            props = _varint(buf, i, stop)
            if props is None or props[1] + props[0] > stop or (properties_to_paho and props[0]):
                break
            i = props[1] + props[0]
        put(Received(topic, bytes(buf[i:stop]), qos, mid))
        pos = stop
    return pos


def install(client: aiomqtt.Client, pause: ReadPause | None = None, *, properties_to_paho: bool = False) -> bool:
    """Give a connected client (plain TCP, buffered reads) the fast PUBLISH reader; False, unchanged, otherwise.

    With ``pause``, each read pass tells it what it queued (it stops reading while too much waits).
    With ``properties_to_paho``, MQTT 5 PUBLISH packets with properties go through paho (``take_publishes``).
    """
    paho = client._client
    sock = paho._sock  # buffered reads, or coalesced writes over buffered reads (coalesce.py)
    reads = sock._sock if isinstance(sock, CoalescedWrites) else sock
    queue: asyncio.Queue[aiomqtt.Message] | None = getattr(client, "_queue", None)
    if not lean.supported() or not isinstance(reads, lean.BufferedReads) or queue is None or queue.maxsize > 0:
        return False  # a bounded queue: aiomqtt's own callback handles a full queue, put_nowait would raise
    v5 = paho._protocol == paho_client.MQTTv5
    pahos_read = paho._packet_read
    put = cast(Callable[[Received], None], queue.put_nowait)  # a Received reads as a Message (topic_of)

    def packet_read() -> MQTTErrorCode:
        if paho._in_packet["command"] != 0 or paho._sock is not sock:
            return pahos_read()  # part-way through a packet of its own, or another socket now
        if not reads.pending() and not reads.fill():
            return pahos_read()  # nothing waiting, or the socket failed: paho reports it as always
        taken = take_publishes(reads.buffer, v5, put, properties_to_paho=properties_to_paho)
        if not taken:
            return pahos_read()
        reads.consume(taken)
        if pause is not None:
            pause.read(taken)
        with paho._msgtime_mutex:
            paho._last_bytes_received = paho_client.time_func()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    paho._packet_read = packet_read  # type: ignore[method-assign]
    return True


class BatchedAcks:
    """PUBACKs of one event-loop pass as one queued packet (paho sends it with one ``send``)."""

    def __init__(self, paho: paho_client.Client) -> None:
        self._paho = paho
        self._mids: list[int] = []
        self.dropped = 0  # acks whose connection was gone: the broker redelivers those messages

    def add(self, mid: int) -> None:
        """Acknowledge QoS 1 packet ``mid`` at the end of this loop pass."""
        if not self._mids:
            asyncio.get_running_loop().call_soon(self.flush)
        self._mids.append(mid)

    def flush(self) -> None:
        """Queue the collected PUBACKs now."""
        mids, self._mids = self._mids, []
        if not mids:
            return
        if self._paho._sock is None:
            self.dropped += len(mids)
            return
        packet = b"".join(bytes((_PUBACK, 2, mid >> 8, mid & 0xFF)) for mid in mids)
        self._paho._packet_queue(_PUBACK, packet, 0, 1)


__all__ = ["BatchedAcks", "Received", "install", "take_publishes", "topic_of"]
