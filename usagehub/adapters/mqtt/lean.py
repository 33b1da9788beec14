"""A lean receive path for paho (under aiomqtt): no per-message objects that nobody reads.

Measured on the fleet benchmark (py-spy, ``BENCH_PYSPY``), paho spent a third of
the hub's CPU per received PUBLISH on three things the hub never uses:

- an MQTT 5 ``Properties`` object whose constructor rebuilds its name and type
  tables (about 60 entries) for every packet: 17 % of the hub's CPU;
- a ``threading.Condition`` (and its ``RLock``) in each received message's
  ``MQTTMessageInfo``, which exists for ``wait_for_publish`` on *sent* messages: 5 %;
- a walk of the topic-filter trie of ``message_callback_add`` callbacks, which
  aiomqtt never registers: 4 %;
- ``Properties.clear`` at the start of each unpack, a walk of the name table: 2.6 %.

And aiomqtt's message iterator makes a task and an ``asyncio.wait`` per message even when
messages are queued already (about 7 %): :func:`messages` takes queued ones directly.

:func:`install` swaps in equivalents that share the tables, create the condition
on first use, and skip the empty trie. The behaviour is paho's (the adapter
tests run against Mosquitto, and ``tests/adapters/test_mqtt_lean.py`` compares
decoded properties with paho's own class). It applies to the paho 2.x this
project pins; on any other version it leaves paho as it is.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiomqtt
import aiomqtt.client
import paho.mqtt
from paho.mqtt import _packet
from paho.mqtt import client as paho_client
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

_TABLES = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]


class SharedTableProperties(Properties):
    """paho's ``Properties`` with its (constant) name and type tables built once, not per packet."""

    types = _TABLES.types
    names = _TABLES.names
    properties = _TABLES.properties

    def __init__(self, packetType: int) -> None:
        object.__setattr__(self, "packetType", packetType)

    def clear(self) -> None:
        """Drop every property (paho walks its whole name table, per packet, to find the ones set)."""
        for name in [n for n in vars(self) if n != "packetType"]:
            object.__delattr__(self, name)

    def isEmpty(self) -> bool:  # paho's name
        """Whether no property is set."""
        return len(vars(self)) <= 1


class LazyMessageInfo(paho_client.MQTTMessageInfo):
    """``MQTTMessageInfo`` whose condition is made when a publisher first waits on it."""

    __slots__ = ("_lazy_condition",)

    def __init__(self, mid: int) -> None:
        self.mid = mid
        self._published = False
        self._lazy_condition: threading.Condition | None = None
        self.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        self._iterpos = 0

    @property  # paho's slot, made lazy
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        cond = self._lazy_condition
        if cond is None:
            cond = self._lazy_condition = threading.Condition()
        return cond


class FilteredCallbacks(MQTTMatcher):
    """paho's matcher of ``message_callback_add`` filters that costs nothing while it is empty."""

    def iter_match(self, topic: str) -> Iterator[Any]:
        if not self._root._children and self._root._content is None:
            return iter(())
        return super().iter_match(topic)  # type: ignore[no-untyped-call,no-any-return]


def supported() -> bool:
    """Whether the installed paho is the 2.x whose internals this module replaces."""
    return paho.mqtt.__version__.startswith("2.")


def install() -> bool:
    """Swap in the lean classes (idempotent); False, and nothing changed, on an unknown paho."""
    if not supported():
        return False
    _packet.Properties = SharedTableProperties  # type: ignore[attr-defined]
    paho_client.MQTTMessageInfo = LazyMessageInfo  # type: ignore[misc]
    return True


def lean_client(client: paho_client.Client) -> None:
    """Give one paho client the matcher that skips an empty filter trie."""
    if supported() and type(client._on_message_filtered) is MQTTMatcher:
        client._on_message_filtered = FilteredCallbacks()  # type: ignore[no-untyped-call]


class BufferedReads:
    """paho's socket with buffered reads: one ``recv`` serves many packets.

    paho reads a packet's header byte, each length byte and the body with a ``recv``
    each (three or more system calls per packet, the largest cost of a small
    request/response exchange on this machine). ``pending()`` is the hook aiomqtt's
    reader already calls for TLS sockets: it keeps reading while buffered bytes remain.
    ``held`` (``backpressure.ReadPause``) makes it read as if nothing waited, buffered bytes included.
    """

    __slots__ = ("_buf", "_sock", "held")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = bytearray()
        self.held = False

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes, from the buffer or one large read (BlockingIOError when none wait)."""
        if self.held:
            raise BlockingIOError
        buf = self._buf
        if not buf:
            data = self._sock.recv(max(size, 65536))
            if len(data) <= size:
                return bytes(data)
            buf += data
        out = bytes(buf[:size])
        del buf[:size]  # a bytearray drops its head without moving the rest
        return out

    def pending(self) -> int:
        """Bytes read from the socket and not yet handed to paho (0 while held)."""
        return 0 if self.held else len(self._buf)

    @property
    def buffer(self) -> bytearray:
        """The bytes read and not yet handed out (``fastpath`` parses them in place)."""
        return self._buf

    def fill(self) -> bool:
        """One large read into the buffer; False if none came (nothing waiting, closed, failed, or held)."""
        if self.held:
            return False
        try:
            data = self._sock.recv(65536)
        except OSError:
            return False
        self._buf += data
        return bool(data)

    def consume(self, size: int) -> None:
        """Drop the first ``size`` buffered bytes (handed out by a parser of its own)."""
        del self._buf[:size]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def buffer_reads(client: aiomqtt.Client) -> bool:
    """Give a connected client's plain TCP socket buffered reads; False (unchanged) for TLS or unknown sockets."""
    paho_client_ = client._client
    sock = paho_client_._sock
    if not supported() or type(sock) is not socket.socket:
        return False
    paho_client_._sock = BufferedReads(sock)
    return True


class QueuedFirstMessages(aiomqtt.client.MessagesIterator):
    """aiomqtt's message iterator that hands out queued messages without a task and a wait each."""

    async def __anext__(self) -> aiomqtt.Message:
        client = self._client
        queue = client._queue
        if not queue.empty() and not client._disconnected.done():
            return queue.get_nowait()
        return await super().__anext__()


def messages(client: aiomqtt.Client) -> AsyncIterator[aiomqtt.Message]:
    """The client's incoming messages: queued ones first, without waiting (aiomqtt 2.x), else aiomqtt's own."""
    if aiomqtt.__version__.startswith("2.") and hasattr(client, "_queue") and hasattr(client, "_disconnected"):
        return QueuedFirstMessages(client)
    return client.messages
