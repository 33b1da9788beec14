"""A fast QoS 1 publisher speaking raw MQTT 3.1.1 (as ../shared/baselines/pub.py), importable."""

from __future__ import annotations

import asyncio
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
