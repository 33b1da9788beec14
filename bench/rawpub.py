"""A fast QoS 1 publisher speaking raw MQTT 3.1.1 (as ../shared/baselines/pub.py), importable."""

from __future__ import annotations

import asyncio
import contextlib
import struct


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


async def publish(lines: list[tuple[bytes, bytes]], port: int, window: int = 1000) -> None:
    """Publish every (topic, payload) at QoS 1 and wait for all PUBACKs."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    vh = _field(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", 120) + _field(b"bench-pub")
    w.write(b"\x10" + _remaining_length(len(vh)) + vh)
    await w.drain()
    await r.readexactly(4)
    free, acked, pending = asyncio.Semaphore(window), 0, b""

    async def read_acks() -> None:
        nonlocal acked, pending
        while acked < len(lines):
            pending += await r.read(65536)
            k = len(pending) // 4
            pending, acked = pending[k * 4:], acked + k
            for _ in range(k):
                free.release()

    task = asyncio.create_task(read_acks())
    for i, (topic, payload) in enumerate(lines):
        await free.acquire()
        body = _field(topic) + struct.pack("!H", i % 65535 + 1) + payload
        w.write(b"\x32" + _remaining_length(len(body)) + body)
        if i % 200 == 199:
            await w.drain()
    await w.drain()
    await task
    w.write(b"\xe0\x00")
    await w.drain()
    w.close()


class Publisher:
    """A persistent raw QoS 1 connection for paced publishing: ``send`` returns once the window has room.

    aiomqtt's publish waits per message and paho rescans its in-flight table on every PUBACK, so a
    publisher keeping thousands in flight costs time quadratic in the window (the soak's publisher fell
    behind its own rate). Here a PUBACK is four bytes counted, in order (Mosquitto acks QoS 1 in order).
    """

    def __init__(self, port: int, window: int = 2000, client_id: str = "bench-paced") -> None:
        self.port, self.window, self.client_id = port, window, client_id
        self.sent = self.acked = 0

    async def __aenter__(self) -> Publisher:
        self._r, self._w = await asyncio.open_connection("127.0.0.1", self.port)
        vh = _field(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", 120) + _field(self.client_id.encode())
        self._w.write(b"\x10" + _remaining_length(len(vh)) + vh)
        await self._w.drain()
        connack = await self._r.readexactly(4)
        if connack[3] != 0:
            raise ConnectionError(f"CONNACK refused: {connack[3]}")
        self._free = asyncio.Semaphore(self.window)
        self._reader = asyncio.create_task(self._read_acks())
        return self

    async def _read_acks(self) -> None:
        pending = b""
        while True:
            data = await self._r.read(65536)
            if not data:
                raise ConnectionError("broker closed the connection")
            pending += data
            k = len(pending) // 4
            pending, self.acked = pending[k * 4:], self.acked + k
            for _ in range(k):
                self._free.release()

    async def send(self, messages: list[tuple[str, bytes]]) -> None:
        """Write every message at QoS 1 (waits only while ``window`` are unacknowledged)."""
        for topic, payload in messages:
            if self._reader.done():
                self._reader.result()  # raises what ended it
            await self._free.acquire()
            body = _field(topic.encode()) + struct.pack("!H", self.sent % 65535 + 1) + payload
            self._w.write(b"\x32" + _remaining_length(len(body)) + body)
            self.sent += 1
            if self.sent % 200 == 0:
                await self._w.drain()
        await self._w.drain()

    async def flush(self, timeout_s: float = 60) -> None:
        """Wait until every message sent is acknowledged."""
        async with asyncio.timeout(timeout_s):
            while self.acked < self.sent:
                if self._reader.done():
                    self._reader.result()
                await asyncio.sleep(0.05)

    async def __aexit__(self, *exc: object) -> None:
        self._reader.cancel()
        self._w.write(b"\xe0\x00")
        with contextlib.suppress(ConnectionError):
            await self._w.drain()
        self._w.close()
