"""The lean paho classes behave as paho's own: same decoded properties, waits, filtered callbacks."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import aiomqtt
import pytest
from paho.mqtt import client as paho_client
from paho.mqtt.exception import MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import Mosquitto
from usagehub.adapters.mqtt import lean


def _publish_properties() -> bytes:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic = "prepaid/dev-1/answer"
    props.CorrelationData = b"\x00\x01corr"
    props.UserProperty = [("tenant", "a"), ("tenant", "b")]
    props.MessageExpiryInterval = 30
    props.PayloadFormatIndicator = 1
    packed: bytes = props.pack()  # type: ignore[no-untyped-call]
    return packed


def test_shared_tables_decode_what_paho_decodes() -> None:
    packed = _publish_properties() + b"payload"
    ours, ours_len = lean.SharedTableProperties(PacketTypes.PUBLISH).unpack(packed)
    paho, paho_len = Properties(PacketTypes.PUBLISH).unpack(packed)  # type: ignore[no-untyped-call]
    assert ours_len == paho_len
    assert ours.json() == paho.json()
    assert ours.UserProperty == [("tenant", "a"), ("tenant", "b")]
    # a second packet decoded by another instance starts empty: nothing leaks through the shared tables
    empty, _ = lean.SharedTableProperties(PacketTypes.PUBLISH).unpack(b"\x00")
    assert empty.json() == {}
    assert not hasattr(empty, "ResponseTopic")


def test_clear_and_is_empty_as_pahos() -> None:
    packed = _publish_properties()
    ours, _ = lean.SharedTableProperties(PacketTypes.PUBLISH).unpack(packed)
    paho, _ = Properties(PacketTypes.PUBLISH).unpack(packed)  # type: ignore[no-untyped-call]
    assert ours.isEmpty() is paho.isEmpty() is False
    ours.clear()
    paho.clear()  # type: ignore[no-untyped-call]
    assert ours.isEmpty() is paho.isEmpty() is True
    assert ours.json() == paho.json() == {}
    assert ours.packetType == PacketTypes.PUBLISH
    again, _ = ours.unpack(packed)  # an instance unpacked twice holds the second packet's properties once
    assert again.UserProperty == [("tenant", "a"), ("tenant", "b")]


def test_shared_tables_refuse_what_paho_refuses() -> None:
    props = lean.SharedTableProperties(PacketTypes.PUBLISH)
    with pytest.raises(MQTTException, match="does not apply"):
        props.ReceiveMaximum = 10  # a CONNECT property, not a PUBLISH one


def test_lazy_message_info_waits_like_pahos() -> None:
    info = lean.LazyMessageInfo(7)
    assert info._lazy_condition is None  # nothing built for a received message
    done = threading.Event()

    def waiter() -> None:
        info.wait_for_publish(timeout=5)
        done.set()

    t = threading.Thread(target=waiter)
    t.start()
    info._set_as_published()
    t.join(5)
    assert done.is_set() and info.is_published()


def test_filtered_callbacks_match_once_registered() -> None:
    matcher = lean.FilteredCallbacks()
    assert list(matcher.iter_match("meters/m1/reading")) == []
    matcher["meters/+/reading"] = "cb"
    assert list(matcher.iter_match("meters/m1/reading")) == ["cb"]
    assert list(matcher.iter_match("alarms/p1")) == []


def test_install_swaps_the_classes_paho_uses() -> None:
    assert lean.install()
    from paho.mqtt import _packet

    assert _packet.Properties is lean.SharedTableProperties
    message = paho_client.MQTTMessage(3, b"meters/m1")
    assert isinstance(message.info, lean.LazyMessageInfo)
    client = paho_client.Client(paho_client.CallbackAPIVersion.VERSION2, protocol=paho_client.MQTTv5)
    lean.lean_client(client)
    assert isinstance(client._on_message_filtered, lean.FilteredCallbacks)


async def test_queued_first_messages_against_mosquitto(mosquitto: Mosquitto) -> None:
    """Every message once, in order (queued ones taken directly), then the disconnect error as aiomqtt's."""
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="lean-sub") as sub, \
            aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="lean-pub") as pub:
        await sub.subscribe("lean/#", qos=1)
        for i in range(300):
            await pub.publish("lean/t", str(i).encode(), qos=1)
        iterator = lean.messages(sub)
        assert isinstance(iterator, lean.QueuedFirstMessages)
        got = []
        async with asyncio.timeout(20):
            async for message in iterator:
                got.append(int(bytes(message.payload)))  # type: ignore[arg-type]
                if len(got) == 300:
                    break
        assert got == list(range(300))
        mosquitto.stop()  # the broker goes: the iterator ends with aiomqtt's error, not a hang
        with pytest.raises(aiomqtt.MqttError):
            async with asyncio.timeout(20):
                await anext(iterator)


def test_buffered_reads_serve_coalesced_and_split_packets() -> None:
    """Many packets in one read are handed out piece by piece; a packet cut across reads is joined by paho's reads."""
    import socket

    a, b = socket.socketpair()
    a.setblocking(False)
    reads = lean.BufferedReads(a)
    try:
        with pytest.raises(BlockingIOError):  # nothing waiting: paho's "again", as from the raw socket
            reads.recv(1)
        b.sendall(b"\x30\x03ab1" + b"\x30\x03ab2" + b"\x30\x03a")  # two whole packets and the head of a third
        got = [reads.recv(1), reads.recv(1), reads.recv(3), reads.recv(1), reads.recv(1), reads.recv(3)]
        assert got == [b"\x30", b"\x03", b"ab1", b"\x30", b"\x03", b"ab2"]
        assert reads.pending() == 3
        assert reads.recv(1) + reads.recv(1) == b"\x30\x03"
        assert reads.recv(3) == b"a"  # only what arrived: paho keeps the rest of the packet to read
        assert reads.pending() == 0
        b.sendall(b"b3")
        assert reads.recv(2) == b"b3"
        assert reads.fileno() == a.fileno()  # everything else is the socket's
    finally:
        a.close()
        b.close()


class _CountingSocket:
    def __init__(self, sock: object) -> None:
        self.sock, self.reads = sock, 0

    def recv(self, size: int) -> bytes:
        self.reads += 1
        return self.sock.recv(size)  # type: ignore[attr-defined,no-any-return]

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


async def test_buffered_reads_deliver_a_backlog_once_in_order(mosquitto: Mosquitto) -> None:
    """A stored backlog arrives many packets per read: every message once, in order, and acked (none redelivered)."""
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="lean-buf", clean_session=False) as sub:
        await sub.subscribe("buf/#", qos=1)
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="lean-buf-pub") as pub:
        for i in range(2000):
            await pub.publish("buf/t", str(i).encode(), qos=1)
    for round_ in range(2):
        sub = aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="lean-buf", clean_session=False)
        sub._client.manual_ack_set(True)
        got: list[int] = []
        async with sub:
            assert lean.buffer_reads(sub)
            reads = sub._client._sock
            assert isinstance(reads, lean.BufferedReads)
            raw = reads._sock = _CountingSocket(reads._sock)
            with pytest.raises(TimeoutError) if round_ else contextlib.nullcontext():
                async with asyncio.timeout(20 if not round_ else 1.5):
                    async for message in lean.messages(sub):
                        got.append(int(bytes(message.payload)))  # type: ignore[arg-type]
                        sub._client.ack(message.mid, message.qos)
                        if len(got) == 2000:
                            break
            if not round_:
                assert got == list(range(2000))
                assert raw.reads < 2000 / 10  # many packets per read (paho alone reads 3 times per packet)
                await asyncio.sleep(0.3)  # the acks leave before the disconnect
            else:
                assert got == []  # all were acked: nothing comes again
