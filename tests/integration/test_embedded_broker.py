"""The embedded broker (amqtt) requires credentials and holds devices to their own topics, like deploy/acl."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import aiomqtt
import pytest

from tests.fakes import StaticDirectory
from tests.peers import free_port
from usagehub.adapters.base import DeviceEndpoint
from usagehub.runtime.broker import HUB_USER, EmbeddedBroker

DEVICES = [
    DeviceEndpoint(device_id="em-a", profile_id="acme-em340", secrets={"mqtt_password": "pw-a"}),
    DeviceEndpoint(device_id="em-b", profile_id="acme-em340",
                   secrets={"mqtt_password_sha256": hashlib.sha256(b"pw-b").hexdigest()}),
    DeviceEndpoint(device_id="gw-a", profile_id="acme-dc100-gateway", secrets={"mqtt_password": "pw-g"}),
    DeviceEndpoint(device_id="nopw", profile_id="acme-em340"),
]


@pytest.fixture
async def broker() -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker(free_port()) as b:
        b.guard.directory = StaticDirectory(DEVICES)
        yield b


def client(broker: EmbeddedBroker, user: str | None, password: str | None = None) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", broker.port, username=user, password=password, identifier=f"t-{user}",
                          protocol=aiomqtt.ProtocolVersion.V311, timeout=5)


async def refused(broker: EmbeddedBroker, user: str | None, password: str | None) -> bool:
    try:
        async with client(broker, user, password):
            return False
    except aiomqtt.MqttError:
        return True


async def test_clients_must_log_in(broker: EmbeddedBroker) -> None:
    assert await refused(broker, None, None)
    assert await refused(broker, "em-a", "wrong")
    assert await refused(broker, "nopw", "")              # a device without an MQTT secret cannot log in
    assert await refused(broker, "ghost", "pw-a")         # not registered
    assert await refused(broker, HUB_USER, "guess")
    assert not await refused(broker, "em-a", "pw-a")
    assert not await refused(broker, "em-b", "pw-b")      # hashed secret
    assert not await refused(broker, HUB_USER, broker.guard.hub_password)


async def _received(hub: aiomqtt.Client, n: int) -> list[tuple[str, bytes]]:
    """The first ``n`` messages the hub's client receives, then a pause in which nothing else may arrive."""
    got: list[tuple[str, bytes]] = []
    async with asyncio.timeout(5):
        async for message in hub.messages:
            got.append((str(message.topic), bytes(message.payload)))  # type: ignore[arg-type]
            if len(got) == n:
                break
    await asyncio.sleep(0.2)
    return got


async def test_devices_publish_only_under_their_own_id(broker: EmbeddedBroker) -> None:
    async with client(broker, HUB_USER, broker.guard.hub_password) as hub:
        await hub.subscribe("#", qos=1)
        async with client(broker, "em-a", "pw-a") as em_a, client(broker, "gw-a", "pw-g") as gw_a:
            await em_a.publish("meters/em-b/reading", b"hostile", qos=1)
            await gw_a.publish("gateways/gw-b/batch", b"hostile", qos=1)
            await em_a.publish("security/em-a/event/x", b"hostile", qos=1)
            await em_a.publish("meters/em-a/reading", b"ok-a", qos=1)
            await gw_a.publish("gateways/gw-a/batch", b"ok-g", qos=1)
        got = await _received(hub, 2)
    assert got == [("meters/em-a/reading", b"ok-a"), ("gateways/gw-a/batch", b"ok-g")]


async def test_a_device_subscribes_only_to_its_own_commands(broker: EmbeddedBroker) -> None:
    async with client(broker, "em-a", "pw-a") as em_a:
        ok = await em_a.subscribe("meters/em-a/cmd", qos=1)
        other = await em_a.subscribe("meters/em-b/cmd", qos=1)
        everything = await em_a.subscribe("#", qos=1)
    assert [_granted(ok), _granted(other), _granted(everything)] == [True, False, False]


def _granted(result: object) -> bool:
    codes = [getattr(c, "value", c) for c in result]  # type: ignore[attr-defined]
    return all(int(c) < 0x80 for c in codes)


async def test_radio_gateways_and_edge_nodes_publish_only_under_their_own_id(broker: EmbeddedBroker) -> None:
    async with client(broker, HUB_USER, broker.guard.hub_password) as hub:
        await hub.subscribe("#", qos=1)
        async with client(broker, "gw-a", "pw-g") as gw_a:
            await gw_a.publish("wmbus/gw-b/telegram", b"hostile", qos=1)
            await gw_a.publish("spBv1.0/plant/DDATA/em-b/m1", b"hostile", qos=1)   # another edge node's id
            await gw_a.publish("spBv1.0/plant/DDATA/gw-a/m1/x", b"hostile", qos=1)  # deeper than a device
            await gw_a.publish("wmbus/gw-a/telegram", b"ok-w", qos=1)
            await gw_a.publish("spBv1.0/plant/NBIRTH/gw-a", b"ok-n", qos=1)
            await gw_a.publish("spBv1.0/plant/DDATA/gw-a/m1", b"ok-d", qos=1)
        got = await _received(hub, 3)
    assert got == [("wmbus/gw-a/telegram", b"ok-w"), ("spBv1.0/plant/NBIRTH/gw-a", b"ok-n"),
                   ("spBv1.0/plant/DDATA/gw-a/m1", b"ok-d")]


async def test_an_edge_node_subscribes_only_to_its_own_commands(broker: EmbeddedBroker) -> None:
    async with client(broker, "gw-a", "pw-g") as gw_a:
        granted = [_granted(await gw_a.subscribe(t, qos=1)) for t in (
            "spBv1.0/plant/NCMD/gw-a", "spBv1.0/+/DCMD/gw-a/+", "spBv1.0/STATE/+",
            "spBv1.0/plant/NCMD/em-b", "spBv1.0/+/NCMD/+", "spBv1.0/#", "wmbus/+/telegram")]
    assert granted == [True, True, True, False, False, False, False]
