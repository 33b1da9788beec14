"""A bind-only adapter on real sockets: a busy port fails the start naming it; a listener that dies is rebound."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from tests.adapters.binary.test_adapter import _decide, _settings
from tests.core.codecs.binary_records import pulse_record
from tests.fakes import RecordingSink
from tests.peers import free_port, time_scale
from usagehub import metrics
from usagehub.adapters.binary import FACTORY, BinaryAdapter, BinaryConfig
from usagehub.adapters.link import Link, keep_serving
from usagehub.errors import PermanentAdapterError
from usagehub.runtime.readiness import Readiness


class _Committing:
    """The two things readiness asks of the pipeline: here, never stalled."""

    stalled = False

    def commit_wait_s(self) -> float:
        return 0.0


def _adapter(tmp_path: Path, protocol: str, port: int) -> BinaryAdapter:
    config = BinaryConfig.model_validate(
        {"listeners": [{"profile": "acme-pulse-bin", "protocol": protocol, "host": "127.0.0.1", "port": port}]}
    )
    adapter = FACTORY.create(config, _settings(tmp_path))
    assert isinstance(adapter, BinaryAdapter)
    return adapter


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
async def test_a_busy_port_fails_the_start_naming_the_port(tmp_path: Path, protocol: str) -> None:
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind(("127.0.0.1", 0))
        if protocol == "tcp":
            taken.listen()
        port = taken.getsockname()[1]
        adapter = _adapter(tmp_path, protocol, port)
        with pytest.raises(PermanentAdapterError) as info:
            async with adapter:
                pytest.fail("entered on a busy port")
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and protocol.upper() in message and "listeners[0].port" in message


async def test_a_udp_listener_that_dies_is_rebound_on_its_port_and_not_ready_meanwhile(tmp_path: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    adapter = _adapter(tmp_path, "udp", port)
    sink = RecordingSink(_decide)
    link = Link("binary-rebind-test", first_delay_s=0.3, max_delay_s=1.0)
    readiness = Readiness({"binary": adapter}, _Committing(), {"binary": link})  # type: ignore[arg-type]
    readiness.started.set()
    limit = 5 * time_scale()
    async with adapter:
        task = asyncio.create_task(keep_serving(adapter, sink, link, detail=f"udp:{port}"))
        try:
            async with asyncio.timeout(limit):
                await adapter.ready.wait()
            assert readiness.ready()[0]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.sendto(pulse_record(seq=1), ("127.0.0.1", port))
                await sink.wait_for(1, limit)

                adapter._transports[0].close()  # the listening socket goes away under the running adapter
                async with asyncio.timeout(limit):
                    while link.is_up:  # noqa: ASYNC110 — polling the public state
                        await asyncio.sleep(0.01)
                ready, detail = readiness.ready()
                assert not ready and detail["adapters"]["binary"] is False

                async with asyncio.timeout(limit):  # rebound after the backoff, on the same port
                    while not (link.is_up and adapter.ready.is_set()):  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                assert adapter.bound == [port] and readiness.ready()[0]
                udp.sendto(pulse_record(seq=2), ("127.0.0.1", port))
                messages = await sink.wait_for(2, limit)
            assert len(messages) == 2 and _decide(messages[1]).accepted > 0
            outages = metrics.REGISTRY.get_sample_value("usagehub_adapter_outages_total",
                                                        {"adapter": "binary-rebind-test"})
            assert outages == 1 and link.outages == 1
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
