"""PUBACKs leave in arrival order after the commits, held at most ``ack_hold_s`` behind an uncommitted message.

Against a real Mosquitto: what the broker delivers again to the persistent session shows which messages
it saw acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Callable
from pathlib import Path

import aiomqtt

from tests.conftest import Mosquitto
from usagehub.adapters.base import AdapterSettings
from usagehub.adapters.mqtt.adapter import MqttAdapter
from usagehub.adapters.mqtt.config import MqttConfig
from usagehub.core.events import RawMessage


class _Lanes:
    """An offering sink (as the pipeline is) whose commits the test completes, in any order it likes."""

    def __init__(self) -> None:
        self.got: list[tuple[RawMessage, Callable[[], None] | None]] = []
        self.changed = asyncio.Event()

    async def submit(self, message: RawMessage) -> asyncio.Future[object]:
        raise AssertionError("the adapter offers to a pipeline")

    async def offer(self, message: RawMessage, stored: Callable[[], None] | None) -> None:
        self.offer_nowait(message, stored)

    def offer_nowait(self, message: RawMessage, stored: Callable[[], None] | None) -> bool:
        self.got.append((message, stored))
        self.changed.set()
        return True

    async def wait_for(self, n: int, seconds: float = 20) -> None:
        async with asyncio.timeout(seconds):
            while len(self.got) < n:
                self.changed.clear()
                await self.changed.wait()

    def commit(self, payloads: list[bytes]) -> None:
        by_payload = {m.payload: stored for m, stored in self.got}
        for p in payloads:
            stored = by_payload[p]
            assert stored is not None
            stored()


async def _session(port: int, client_id: str, hold_s: float, n: int, act: Callable[[_Lanes], object],
                   linger_s: float) -> _Lanes:
    """Connect the adapter's persistent session, take ``n`` messages, let ``act`` commit some, then leave."""
    config = MqttConfig(url=f"mqtt://127.0.0.1:{port}", client_id=client_id, topics=["ack/#"], ack_hold_s=hold_s)
    adapter = MqttAdapter(config, AdapterSettings(profiles=[], devices=None, data_dir=Path(".")))  # type: ignore[arg-type]
    lanes = _Lanes()
    task = asyncio.create_task(adapter.run(lanes))  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(10):
            await adapter.connected.wait()
        if n:
            with contextlib.suppress(TimeoutError):
                await lanes.wait_for(n, 10)
            act(lanes)
        await asyncio.sleep(linger_s)  # the acks due leave
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return lanes


async def _publish(port: int, client_id: str, count: int) -> list[bytes]:
    payloads = [f"{client_id}-{i}".encode() for i in range(count)]
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"{client_id}-pub") as pub:
        for i, p in enumerate(payloads):
            await pub.publish(f"ack/d{i % 5}", p, qos=1)
    return payloads


async def test_commits_in_any_order_are_all_acknowledged(mosquitto: Mosquitto) -> None:
    client_id = f"ack-{uuid.uuid4().hex[:6]}"
    await _session(mosquitto.port, client_id, 2.0, 0, lambda lanes: None, 0.2)  # the persistent session exists
    payloads = await _publish(mosquitto.port, client_id, 300)
    order = payloads[:]
    random.Random(7).shuffle(order)  # two lanes commit their batches in any order
    first = await _session(mosquitto.port, client_id, 2.0, 300, lambda lanes: lanes.commit(order), 0.5)
    assert sorted(m.payload for m, _ in first.got) == sorted(payloads)
    again = await _session(mosquitto.port, client_id, 2.0, 0, lambda lanes: None, 1.0)
    assert again.got == []  # every commit was acknowledged: nothing comes back


async def test_younger_acks_wait_for_an_older_commit_then_go_ahead_of_it(mosquitto: Mosquitto) -> None:
    client_id = f"ack-{uuid.uuid4().hex[:6]}"
    await _session(mosquitto.port, client_id, 0.6, 0, lambda lanes: None, 0.2)
    payloads = await _publish(mosquitto.port, client_id, 50)
    # The oldest message's commit does not come; the 49 younger ones commit. Left within the hold: nothing
    # was acknowledged, so the broker delivers all 50 again.
    held = await _session(mosquitto.port, client_id, 5.0, 50, lambda lanes: lanes.commit(payloads[1:]), 0.3)
    assert len(held.got) == 50
    back = await _session(mosquitto.port, client_id, 0.6, 50, lambda lanes: lanes.commit(payloads[1:]), 1.5)
    assert sorted(m.payload for m, _ in back.got) == sorted(payloads)  # all 50 again: none was acked
    # Past the hold the 49 went ahead of it: only the uncommitted one comes back.
    last = await _session(mosquitto.port, client_id, 0.6, 1, lambda lanes: None, 0.5)
    assert [m.payload for m, _ in last.got] == [payloads[0]]
