"""Coalesced writes: a loop pass's packets leave in one send, nothing is lost or reordered, a full socket waits."""

from __future__ import annotations

import asyncio
import socket

import aiomqtt
import pytest

from tests.conftest import Mosquitto
from usagehub.adapters.mqtt import lean
from usagehub.adapters.mqtt.coalesce import CoalescedWrites, coalesce_writes


class _CountingSocket:
    def __init__(self, sock: object) -> None:
        self.sock, self.sends = sock, 0

    def send(self, data: bytes) -> int:
        self.sends += 1
        return self.sock.send(data)  # type: ignore[attr-defined,no-any-return]

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


def test_a_full_socket_keeps_the_rest_in_order() -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    writes = CoalescedWrites(a)
    try:
        chunk = bytes(range(256)) * 64
        for _ in range(200):  # far more than the kernel buffers hold
            assert writes.send(chunk) == len(chunk)
        assert writes.flush() is False and writes.pending_writes() > 0  # the socket is full: the rest waits
        got = bytearray()
        b.settimeout(2)
        while len(got) < 200 * len(chunk):
            got += b.recv(1 << 20)
            writes.flush()
        assert bytes(got) == chunk * 200 and writes.pending_writes() == 0
        b.close()
        with pytest.raises(OSError):  # the peer went away: the failure is raised, and again on the next send
            for _ in range(100):
                writes.send(chunk)
                writes.flush()
        with pytest.raises(OSError):
            writes.send(b"x")
    finally:
        a.close()


async def test_published_packets_leave_together_and_arrive_in_order(mosquitto: Mosquitto) -> None:
    lean.install()
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="co-sub") as sub, \
            aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="co-pub", max_inflight_messages=1000) as pub:
        await sub.subscribe("co/#", qos=1)
        assert coalesce_writes(pub)
        writes = pub._client._sock
        assert isinstance(writes, CoalescedWrites)
        raw = writes._sock = _CountingSocket(writes._sock)
        paho = pub._client
        for i in range(500):  # one loop pass: paho queues them, the writer sends them when the socket is writable
            assert paho.publish("co/t", str(i).encode(), 1).rc == 0
        got: list[int] = []
        async with asyncio.timeout(20):
            async for message in sub.messages:
                got.append(int(bytes(message.payload)))  # type: ignore[arg-type]
                if len(got) == 500:
                    break
        assert got == list(range(500))
        assert raw.sends < 20  # paho alone sends once per packet
        assert not paho._out_messages or all(m.qos == 1 for m in paho._out_messages.values())
        await asyncio.sleep(0.2)
        assert not paho._out_messages  # every publish was acknowledged by the broker (its PUBACKs were read)
