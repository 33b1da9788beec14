"""The binary listeners under abuse, with a real TCP client and UDP sender: caps, idle timeouts, rate limits."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tests.adapters.binary.test_adapter import _decide, _settings
from tests.core.codecs.binary_records import pulse_record
from tests.fakes import RecordingSink
from usagehub.adapters.binary import FACTORY, BinaryAdapter, BinaryConfig
from usagehub.metrics import REGISTRY


def dropped(door: str, reason: str) -> float:
    return REGISTRY.get_sample_value("usagehub_door_dropped_total", {"door": door, "reason": reason}) or 0.0


@asynccontextmanager
async def running(tmp_path: Path, protocol: str, **config: Any) -> AsyncIterator[tuple[int, RecordingSink]]:
    listeners = [{"profile": "acme-pulse-bin", "protocol": protocol, "host": "127.0.0.1", "port": 0}]
    adapter = FACTORY.create(BinaryConfig.model_validate({"listeners": listeners, **config}), _settings(tmp_path))
    assert isinstance(adapter, BinaryAdapter)
    sink = RecordingSink(_decide)
    async with adapter:
        task = asyncio.create_task(adapter.run(sink))
        async with asyncio.timeout(5):
            await adapter.ready.wait()
        try:
            yield adapter.bound[0], sink
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            return await reader.read(100) == b""
    except TimeoutError:
        return False


async def test_connections_beyond_the_per_source_cap_are_closed_at_once(tmp_path: Path) -> None:
    async with running(tmp_path, "tcp", max_connections_per_source=2) as (port, sink):
        before = dropped("binary-tcp", "per-source connection cap")
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await closed_within(reader, 2)                       # the third: closed, not parked
        assert dropped("binary-tcp", "per-source connection cap") == before + 1
        _, w0 = held[0]
        w0.write(pulse_record(device=7))                            # the held ones still work
        await w0.drain()
        async with asyncio.timeout(5):
            await sink.wait_for(1)
        for _, w in [*held, (reader, writer)]:
            w.close()


async def test_a_silent_connection_is_closed_after_the_idle_timeout(tmp_path: Path) -> None:
    async with running(tmp_path, "tcp", idle_timeout_s=0.3) as (port, _):
        before = dropped("binary-tcp", "idle timeout")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(pulse_record()[:10])                           # a partial frame, then nothing
        assert await closed_within(reader, 3)
        assert 0.2 < time.monotonic() - started < 3
        assert dropped("binary-tcp", "idle timeout") == before + 1
        writer.close()


async def test_udp_flood_from_one_source_is_rate_limited_and_counted(tmp_path: Path) -> None:
    limit = {"per_source_per_s": 1, "burst": 5}
    async with running(tmp_path, "udp", udp_rate_limit=limit) as (port, sink):
        before = dropped("binary-udp", "rate limited")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for seq in range(50):
                sock.sendto(pulse_record(seq=seq), ("127.0.0.1", port))
        await asyncio.sleep(0.5)
        assert 5 <= len(sink.messages) <= 6                         # the burst (and at most one refill)
        assert dropped("binary-udp", "rate limited") >= 44
        assert len(sink.messages) + dropped("binary-udp", "rate limited") - before == 50  # every drop counted


async def test_udp_flood_from_many_sources_is_bounded_in_total(tmp_path: Path) -> None:
    """Source addresses are free to an attacker: 30 of them, each within its own rate, still share one total."""
    limit = {"per_source_per_s": 0.01, "burst": 5, "total_per_s": 0.01, "total_burst": 20}
    async with running(tmp_path, "udp", udp_rate_limit=limit) as (port, sink):
        before = dropped("binary-udp", "rate limited")
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(30)]
        try:
            for n, sock in enumerate(senders):
                sock.bind((f"127.0.1.{n + 1}", 0))
                for seq in range(5):
                    sock.sendto(pulse_record(seq=seq), ("127.0.0.1", port))
        finally:
            for sock in senders:
                sock.close()
        await asyncio.sleep(0.5)
        assert len(sink.messages) == 20                              # the total burst, not 30 x 5
        assert {m.source.rsplit(":", 1)[0] for m in sink.messages} == {f"127.0.1.{n}" for n in range(1, 5)}
        assert dropped("binary-udp", "rate limited") - before == 130  # every drop counted


async def test_each_frame_of_a_datagram_costs_a_token(tmp_path: Path) -> None:
    """One datagram cut into many frames must not write many quarantine rows for the price of one."""
    limit = {"per_source_per_s": 0.01, "burst": 4}
    async with running(tmp_path, "udp", udp_rate_limit=limit) as (port, sink):
        before = dropped("binary-udp", "rate limited")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"".join(pulse_record(seq=seq) for seq in range(10)), ("127.0.0.1", port))
        await asyncio.sleep(0.5)
        assert len(sink.messages) == 4                              # the burst, in frames
        assert dropped("binary-udp", "rate limited") - before == 6  # every dropped frame counted
