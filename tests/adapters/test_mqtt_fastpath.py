"""The fast PUBLISH reader takes exactly what paho would decode, leaves the rest to paho, and acks after the commit."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import aiomqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt import client as paho_client
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import Mosquitto
from usagehub.adapters.base import AdapterSettings, Outcome, Receipt
from usagehub.adapters.mqtt import fastpath, lean
from usagehub.adapters.mqtt.adapter import MqttAdapter
from usagehub.adapters.mqtt.config import MqttConfig
from usagehub.core.events import RawMessage

PINGRESP = b"\xd0\x00"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: bytes, payload: bytes, qos: int, mid: int, v5: bool, props: bytes = b"") -> bytes:
    """One PUBLISH packet as a broker sends it (checked against paho's decoder below)."""
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    if v5:
        body += _varint(len(props)) + props
    body += payload
    return bytes((0x30 | qos << 1,)) + _varint(len(body)) + body


def _user_props() -> bytes:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = [("tenant", "a")]
    props.MessageExpiryInterval = 30
    packed: bytes = props.pack()[1:]  # type: ignore[no-untyped-call]  # without paho's own length prefix
    return packed


packets = st.one_of(
    st.tuples(st.just("pub"), st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t),
              st.binary(max_size=300), st.integers(0, 2), st.integers(1, 65535), st.booleans()),
    st.tuples(st.just("ping")),
)


def _stream(items: list[tuple[object, ...]], v5: bool) -> tuple[bytes, list[tuple[str, bytes, int, int] | None]]:
    out, want = b"", list[tuple[str, bytes, int, int] | None]()
    for item in items:
        if item[0] == "ping":
            out += PINGRESP
            want.append(None)
            continue
        _, topic, payload, qos, mid, with_props = item
        packet = publish(str(topic).encode(), bytes(payload), int(qos), int(mid) if qos else 0, v5,  # type: ignore[call-overload]
                         _user_props() if with_props and v5 else b"")
        decoded = _packet.decode_publish(packet[0], packet[_vlen(packet) + 1:],
                                         paho_client.MQTTv5 if v5 else paho_client.MQTTv311)
        assert (decoded.topic.decode(), decoded.payload, decoded.qos, decoded.mid) == \
            (topic, payload, qos, mid if qos else 0)  # the test's encoder is right: paho reads it back
        out += packet
        want.append(None if qos == 2 else (str(topic), bytes(payload), int(qos), int(mid) if qos else 0))  # type: ignore[call-overload]
    return out, want


def _vlen(packet: bytes) -> int:
    """Index of the last byte of ``packet``'s remaining-length field."""
    i = 1
    while packet[i] & 0x80:
        i += 1
    return i


@settings(max_examples=150, deadline=None)
@given(items=st.lists(packets, max_size=8), v5=st.booleans(), data=st.data())
def test_takes_the_complete_qos01_publishes_at_the_head_as_paho_decodes_them(
        items: list[tuple[object, ...]], v5: bool, data: st.DataObject) -> None:
    stream, want = _stream(items, v5)
    cut = data.draw(st.integers(0, len(stream)), label="cut")  # the socket delivered only this much
    got: list[fastpath.Received] = []
    taken = fastpath.take_publishes(bytearray(stream[:cut]), v5, got.append)
    expected, end = [], 0
    for packet_want, packet_len in zip(want, _lengths(stream), strict=True):
        if packet_want is None or end + packet_len > cut:
            break  # paho's turn: another packet type, QoS 2, or not complete yet
        expected.append(packet_want)
        end += packet_len
    assert [(r.topic, r.payload, r.qos, r.mid) for r in got] == expected
    assert taken == end


def _lengths(stream: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(stream):
        i, length, shift = pos + 1, 0, 0
        while True:
            byte = stream[i]
            length |= (byte & 0x7F) << shift
            i += 1
            shift += 7
            if not byte & 0x80:
                break
        out.append(i - pos + length)
        pos = i + length
    return out


@settings(max_examples=300, deadline=None)
@given(junk=st.binary(max_size=200), v5=st.booleans())
def test_hostile_bytes_never_raise_and_take_only_whole_packets(junk: bytes, v5: bool) -> None:
    got: list[fastpath.Received] = []
    taken = fastpath.take_publishes(bytearray(junk), v5, got.append)
    assert 0 <= taken <= len(junk)
    if got:  # something was taken only from a stream that starts with a PUBLISH header
        assert junk[0] & 0xF0 == 0x30


def test_an_invalid_utf8_topic_and_a_topic_alias_are_left_to_paho() -> None:
    for v5, bad_topic in ((False, b"m/\xff"), (True, b"m/\xff"), (True, b"")):  # b"": a topic alias
        good = publish(b"m/1", b"x", 1, 7, v5)
        bad = publish(bad_topic, b"x", 1, 8, v5)
        got: list[fastpath.Received] = []
        assert fastpath.take_publishes(bytearray(good + bad + good), v5, got.append) == len(good)
        assert [(r.topic, r.mid) for r in got] == [("m/1", 7)]


def test_with_properties_to_paho_a_publish_with_properties_is_left_to_paho() -> None:
    plain, with_props = publish(b"p/1", b"x", 1, 7, True), publish(b"p/2", b"y", 1, 8, True, _user_props())
    stream = bytearray(plain + with_props + plain)
    got: list[fastpath.Received] = []
    assert fastpath.take_publishes(stream, True, got.append, properties_to_paho=True) == len(plain)
    assert [(r.topic, r.mid) for r in got] == [("p/1", 7)]
    got.clear()  # without it the properties are skipped: all three taken
    assert fastpath.take_publishes(stream, True, got.append) == len(stream)
    assert [(r.topic, r.payload) for r in got] == [("p/1", b"x"), ("p/2", b"y"), ("p/1", b"x")]


class _Sink:
    """A pipeline whose commits succeed at once, except for payloads it is told to fail (never acked)."""

    def __init__(self, fail: set[bytes] | None = None) -> None:
        self.got: list[RawMessage] = []
        self.fail = fail or set()
        self.changed = asyncio.Event()

    async def submit(self, message: RawMessage) -> asyncio.Future[Receipt]:
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        if message.payload in self.fail:
            future.set_exception(RuntimeError("commit failed"))
        else:
            future.set_result(Receipt(outcome=Outcome.ACCEPTED, accepted=1))
        self.got.append(message)
        self.changed.set()
        return future

    async def wait_for(self, n: int, seconds: float = 20) -> None:
        async with asyncio.timeout(seconds):
            while len(self.got) < n:
                self.changed.clear()
                await self.changed.wait()


async def _drain(port: int, client_id: str, protocol: str, sink: _Sink, n: int, seconds: float = 20) -> bool:
    config = MqttConfig(url=f"mqtt://127.0.0.1:{port}", client_id=client_id, topics=["fp/#"], protocol=protocol)
    adapter = MqttAdapter(config, AdapterSettings(profiles=[], devices=None, data_dir=Path(".")))  # type: ignore[arg-type]
    task = asyncio.create_task(adapter.run(sink))
    fast = False
    try:
        with contextlib.suppress(TimeoutError):
            await sink.wait_for(n, seconds)
        client = adapter.client
        fast = client is not None and client._client._packet_read.__name__ == "packet_read"
        await asyncio.sleep(0.5)  # the acks of the last pass leave
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return fast


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_backlog_arrives_once_in_order_and_only_committed_messages_are_acked(
        mosquitto: Mosquitto, protocol: str) -> None:
    client_id = f"fp-{uuid.uuid4().hex[:6]}"
    first = _Sink()
    await _drain(mosquitto.port, client_id, protocol, first, 1, seconds=3)  # the persistent session exists
    v5 = protocol == "5"
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier=f"{client_id}-pub",
                              protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311) as pub:
        props = None
        if v5:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = [("tenant", "a")]
        for i in range(1500):
            await pub.publish(f"fp/m{i % 7}", f"{i}".encode(), qos=1 if i % 10 else 0, properties=props)
        await pub.publish("fp/q2", b"q2", qos=2)  # QoS 2 goes paho's own way
    sink = _Sink(fail={b"13", b"777"})  # two commits fail: the broker must deliver those again
    stored = [f"{i}".encode() for i in range(1500) if i % 10]  # Mosquitto keeps no QoS 0 for an offline session
    assert await _drain(mosquitto.port, client_id, protocol, sink, len(stored) + 1)
    payloads = [m.payload for m in sink.got]
    assert payloads[:len(stored)] == stored  # once each, in order
    assert payloads[len(stored):] == [b"q2"]
    assert {m.topic for m in sink.got[:7]} == {f"fp/m{i}" for i in range(7)}
    again = _Sink()
    await _drain(mosquitto.port, client_id, protocol, again, 2, seconds=3)
    assert sorted(m.payload for m in again.got) == [b"13", b"777"]  # only the failed commits come back


async def test_a_bounded_incoming_queue_keeps_pahos_reader(mosquitto: Mosquitto) -> None:
    # aiomqtt drops (and logs) what overflows a bounded queue in its own callback; put_nowait would raise there
    for bound, expected in ((0, True), (5, False)):
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier=f"fp-bound-{bound}-{uuid.uuid4().hex[:6]}",
                                  max_queued_incoming_messages=bound) as client:
            assert lean.buffer_reads(client)
            assert fastpath.install(client) is expected
            assert (client._client._packet_read.__name__ == "packet_read") is expected
