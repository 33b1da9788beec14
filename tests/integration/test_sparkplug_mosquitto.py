"""The Sparkplug B adapter against a real Mosquitto: an edge node births a meter, publishes by alias,
skips a seq (the hub asks for a rebirth), dies, and the aliases outlive an adapter restart."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import aiomqtt
import pytest

from tests.conftest import Mosquitto
from tests.core.codecs.binary_records import load_profile
from tests.fakes import RecordingSink, StaticDirectory
from usagehub.adapters import load
from usagehub.adapters.base import AdapterSettings, Outcome, Receipt
from usagehub.adapters.sparkplug import FACTORY, SparkplugAdapter, SparkplugConfig
from usagehub.core.codecs.sparkplug import Payload, decode_payload
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage
from usagehub.errors import DecodeError

pytestmark = pytest.mark.integration
PROFILES = [load_profile("sparkplug-energy-meter")]
DECODER = ProfileSet(PROFILES)
T = 1_790_000_000_000
G, E, DEV = "plant", "edge1", "meter-7"
ENERGY, POWER = "Energy/Import kWh", "Power/Active kW"


def _decide(message: RawMessage) -> Receipt:
    try:
        events = DECODER.decode(message)
    except DecodeError as err:
        return Receipt(outcome=Outcome.QUARANTINED, reason=str(err))
    return Receipt(outcome=Outcome.ACCEPTED, accepted=len(events))


def _payload(seq: int, *metrics: tuple[str | None, int | None, float], bd_seq: int | None = None,
             ts: int = T) -> bytes:
    payload = Payload(timestamp=ts, seq=seq)
    if bd_seq is not None:
        m = payload.metrics.add()
        m.name, m.datatype, m.long_value = "bdSeq", 8, bd_seq
    for name, alias, value in metrics:
        m = payload.metrics.add()
        if name:
            m.name = name
        if alias is not None:
            m.alias = alias
        m.datatype, m.double_value = 10, value
    return bytes(payload.SerializeToString())


async def _run(adapter: SparkplugAdapter, sink: RecordingSink) -> asyncio.Task[None]:
    task = asyncio.create_task(adapter.run(sink))
    async with asyncio.timeout(10):
        await adapter.connected.wait()
    return task


async def _stop(adapter: SparkplugAdapter, task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await adapter.__aexit__(None, None, None)


def _values(message: RawMessage) -> dict[str, object]:
    return dict(decode_payload(message.payload)["values"])


async def test_sparkplug_session_over_mosquitto(mosquitto: Mosquitto, tmp_path: Path) -> None:
    assert load("sparkplug") is FACTORY
    config = SparkplugConfig(url=mosquitto.url, rebirth_interval_s=0.1)
    settings = AdapterSettings(profiles=PROFILES, devices=StaticDirectory(), data_dir=tmp_path)
    adapter = FACTORY.create(config, settings)
    assert isinstance(adapter, SparkplugAdapter)
    sink = RecordingSink(_decide)
    task = await _run(adapter, sink)
    ncmd: asyncio.Queue[bytes] = asyncio.Queue()
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="edge1") as edge:
        await edge.subscribe(f"spBv1.0/{G}/NCMD/{E}")

        async def listen() -> None:
            async for message in edge.messages:
                await ncmd.put(bytes(message.payload))  # type: ignore[arg-type]

        listener = asyncio.create_task(listen())
        node, device = f"spBv1.0/{G}/%s/{E}", f"spBv1.0/{G}/%s/{E}/{DEV}"
        await edge.publish(node % "NBIRTH", _payload(0, bd_seq=3))
        await edge.publish(device % "DBIRTH", _payload(1, (ENERGY, 1, 1000.0), (POWER, 2, 2.5)))
        await edge.publish(device % "DDATA", _payload(2, (None, 1, 1001.5), ts=T + 60_000))
        await edge.publish(device % "DDATA", _payload(5, (None, 1, 1003.0), ts=T + 120_000))  # seq gap
        messages = await sink.wait_for(3)  # the node's own NBIRTH is session bookkeeping, not submitted
        assert [m.transport for m in messages] == ["sparkplug"] * 3
        assert _values(messages[1]) == {ENERGY: Decimal("1001.5")} and _values(messages[2]) == {ENERGY: Decimal(1003)}
        assert [_decide(m).accepted for m in messages] == [2, 1, 1]  # a gap does not lose the data
        async with asyncio.timeout(5):
            rebirth = decode_payload(await ncmd.get())
        assert rebirth["values"] == {"Node Control/Rebirth": True}
        await edge.publish(node % "NDEATH", _payload(0, bd_seq=3))
        await asyncio.sleep(0.3)
        await _stop(adapter, task)
        # a new adapter on the same data folder; the node is born again
        adapter2 = FACTORY.create(config, settings)
        assert isinstance(adapter2, SparkplugAdapter)
        task2 = await _run(adapter2, sink)
        await edge.publish(node % "NBIRTH", _payload(0, bd_seq=4))
        await edge.publish(device % "DBIRTH", _payload(1, (ENERGY, 1, 1004.0)))
        await sink.wait_for(4)
        await _stop(adapter2, task2)
        # and once more: aliases learnt by adapter2 are used by adapter3 without any birth
        adapter3 = FACTORY.create(config, settings)
        assert isinstance(adapter3, SparkplugAdapter)
        task3 = await _run(adapter3, sink)
        await edge.publish(device % "DDATA", _payload(2, (None, 1, 1005.0), ts=T + 180_000))
        messages = await sink.wait_for(5)
        assert _values(messages[-1]) == {ENERGY: Decimal(1005)} and _decide(messages[-1]).accepted == 1
        await _stop(adapter3, task3)
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
