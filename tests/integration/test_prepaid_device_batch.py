"""The batched MQTT device side of prepaid against a real Mosquitto and PostgreSQL: two tenants, a hostile
device, malformed requests, bursts decided together, replays answered the same without a second debit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiomqtt
import orjson
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.conftest import Mosquitto
from usagehub.adapters.mqtt.config import MqttConfig
from usagehub.adapters.mqtt.prepaid import PrepaidMqtt, PrepaidMqttSettings
from usagehub.prepaid.service import FlatPricer, PrepaidService
from usagehub.storage.ledger import ledger_sum
from usagehub.storage.registry import Registry

pytestmark = [pytest.mark.integration]
T0 = datetime.now(UTC) - timedelta(days=1)


class Devices:
    """Devices on one MQTT connection: publish requests, collect answers by request id."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.answers: dict[Any, list[dict[str, Any]]] = {}
        self.arrived = asyncio.Event()

    async def pump(self) -> None:
        async for m in self.client.messages:
            doc = orjson.loads(m.payload)
            self.answers.setdefault(doc.get("req"), []).append(doc)
            self.arrived.set()

    async def send(self, device: str, operation: str, payload: bytes | dict[str, Any]) -> None:
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        await self.client.publish(f"prepaid/{device}/{operation}", body, qos=1)

    async def answer(self, req: Any, count: int = 1) -> list[dict[str, Any]]:
        async with asyncio.timeout(10):
            while len(self.answers.get(req, [])) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.answers[req]

    async def ask(self, device: str, operation: str, payload: dict[str, Any]) -> dict[str, Any]:
        await self.send(device, operation, payload)
        return (await self.answer(payload["req"]))[-1]


@contextlib.asynccontextmanager
async def serving(pool: AsyncConnectionPool,
                  mosquitto: Mosquitto) -> AsyncIterator[tuple[Devices, PrepaidService, PrepaidMqtt]]:
    """Tenant ta: account A with meter dA; tenant tb: account B with meter dB and card cB; 10.00 EUR each;
    the hub's MQTT device side serving them, and the devices on one connection."""
    reg = Registry(pool)
    for tenant, account, device in (("ta", "A", "dA"), ("tb", "B", "dB")):
        await reg.upsert_account(account_id=account, tenant=tenant, prepaid=True)
        await reg.upsert_device(device_id=device, tenant=tenant, profile_id="acme-em340")
        await reg.bind(device_id=device, account_id=account, valid_from=T0, tenant=tenant)
    service = PrepaidService(pool, FlatPricer({"energy": Decimal("0.25")}))
    for account in ("A", "B"):
        await service.top_up(account_id=account, amount=Decimal("10.00"), payment_ref=f"pay-{account}")
    await service.register_card(card_id="cB", account_id="B")
    config = MqttConfig(url=f"mqtt://127.0.0.1:{mosquitto.port}", client_id="test")
    hub = PrepaidMqtt(config, service, PrepaidMqttSettings(share_group=None))
    serving_task = asyncio.create_task(hub.run())
    async with asyncio.timeout(10):
        await hub.connected.wait()
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="devices", max_inflight_messages=200) as client:
        await client.subscribe("prepaid/+/response", qos=1)
        devices = Devices(client)
        pumping = asyncio.create_task(devices.pump())
        try:
            yield devices, service, hub
        finally:
            pumping.cancel()
            serving_task.cancel()
            await asyncio.gather(pumping, serving_task, return_exceptions=True)
            await service.close()


@pytest.fixture
async def world(pool: AsyncConnectionPool, mosquitto: Mosquitto) -> AsyncIterator[tuple[Devices, PrepaidService]]:
    """The two tenants' accounts and devices, served (``serving``)."""
    async with serving(pool, mosquitto) as (devices, service, _):
        yield devices, service


async def money(pool: AsyncConnectionPool, account: str) -> tuple[Decimal, Decimal]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT balance, held FROM prepaid_accounts WHERE account_id = %s", (account,))
        row = await cur.fetchone()
        assert row is not None and Decimal(row[0]) == await ledger_sum(conn, account)
        return Decimal(row[0]), Decimal(row[1])


async def test_a_burst_is_decided_exactly_and_replays_do_not_debit_twice(
        world: tuple[Devices, PrepaidService], pool: AsyncConnectionPool) -> None:
    devices, service = world
    batches = service.batches
    # 24 requests of 0.50 EUR at once against 10.00: exactly 20 granted, whatever the batching
    await asyncio.gather(*(devices.send("dA", "authorize", {"req": f"r{i}", "units": "2"}) for i in range(24)))
    answers = [(await devices.answer(f"r{i}"))[0] for i in range(24)]
    granted = [a for a in answers if a["ok"]]
    assert len(granted) == 20
    assert {a["reason"] for a in answers if not a["ok"]} == {"INSUFFICIENT_BALANCE"}
    assert service.batches - batches < 24  # decided together, not one transaction per request
    assert await money(pool, "A") == (Decimal("0.00"), Decimal("10.00"))
    # a replayed request id gets the same grant (or the same refusal: still no money), never a second hold
    first = next(a for a in answers if a["ok"])
    await devices.send("dA", "authorize", {"req": first["req"], "units": "2"})
    again = (await devices.answer(first["req"], count=2))[1]
    assert again == first
    assert await money(pool, "A") == (Decimal("0.00"), Decimal("10.00"))
    # commit one, release one, replay both: same settlements, money moved once
    committed = await devices.ask("dA", "commit", {"req": "c1", "reservation": first["reservation"], "used": "1"})
    assert committed["ok"] and committed["charged"] == "0.25" and committed["state"] == "committed"
    other = granted[1]["reservation"]
    released = await devices.ask("dA", "release", {"req": "l1", "reservation": other})
    assert released["ok"] and released["state"] == "released"
    assert (await devices.ask("dA", "commit", {"req": "c2", "reservation": first["reservation"], "used": "1"})
            | {"req": "c1"}) == committed
    assert (await devices.ask("dA", "release", {"req": "l2", "reservation": other}) | {"req": "l1"}) == released
    assert await money(pool, "A") == (Decimal("0.75"), Decimal("9.00"))  # 0.50 back from each, 0.25 spent
    assert await money(pool, "B") == (Decimal("10.00"), Decimal(0))


async def test_hostile_device_cannot_reach_another_tenant(world: tuple[Devices, PrepaidService],
                                                          pool: AsyncConnectionPool) -> None:
    devices, _ = world
    grant_b = await devices.ask("dB", "authorize", {"req": "b1", "units": "4"})
    assert grant_b["ok"]
    # dA (tenant ta) tries B's card, B's reservation, and a device id it does not own on its own topic
    card = await devices.ask("dA", "authorize", {"req": "h1", "units": "4", "card": "cB"})
    assert card == card | {"ok": False, "reason": "UNKNOWN_CARD"}
    steal = await devices.ask("dA", "commit", {"req": "h2", "reservation": grant_b["reservation"], "used": "0"})
    assert steal == steal | {"ok": False, "reason": "UNKNOWN_RESERVATION"}
    drop = await devices.ask("dA", "release", {"req": "h3", "reservation": grant_b["reservation"]})
    assert drop == drop | {"ok": False, "reason": "UNKNOWN_RESERVATION"}
    assert await money(pool, "B") == (Decimal("9.00"), Decimal("1.00"))  # B's hold untouched
    assert await money(pool, "A") == (Decimal("10.00"), Decimal(0))
    # B's own card still works for B's device
    own = await devices.ask("dB", "authorize", {"req": "b2", "units": "4", "card": "cB"})
    assert own["ok"]


async def test_malformed_requests_are_refused_with_reasons_and_the_loop_goes_on(
        world: tuple[Devices, PrepaidService], pool: AsyncConnectionPool) -> None:
    devices, _ = world
    cases: list[tuple[str, bytes | dict[str, Any], str]] = [
        ("authorize", b"\xff not json", "the request must be a map"),
        ("authorize", b"[1, 2]", "the request must be a map"),
        ("authorize", {"req": "m3", "units": "abc"}, "units is not a number"),
        ("authorize", {"req": "m4", "units": "1e30"}, "units is out of range"),
        ("authorize", {"req": "m5", "units": True}, "units must be a decimal string"),
        ("commit", {"req": "m6", "used": "1"}, "reservation missing"),
        ("commit", {"req": "m7", "reservation": "x" * 500, "used": "1"}, "reservation must have 1..200 characters"),
        ("authorize", {"req": ["not", "a", "string"], "units": "1"}, "req must be a string"),
    ]
    for operation, payload, _ in cases:
        await devices.send("dA", operation, payload)
    refusals = await devices.answer(None, count=3)  # the two non-maps and the list req echo no request id
    details = sorted(a["detail"] for a in refusals) + [(await devices.answer(f"m{i}"))[0]["detail"]
                                                       for i in range(3, 8)]
    assert sorted(details) == sorted(detail for _, _, detail in cases)
    assert all(a["reason"] == "BAD_REQUEST" and not a["ok"] for r in devices.answers.values() for a in r)
    ok = await devices.ask("dA", "authorize", {"req": "after", "units": "1"})
    assert ok["ok"]  # the loop is alive and money moved only for the valid request
    assert await money(pool, "A") == (Decimal("9.75"), Decimal("0.25"))


async def test_mqtt5_requests_with_a_response_topic_and_plain_ones_are_each_answered_where_asked(
        world: tuple[Devices, PrepaidService], pool: AsyncConnectionPool, mosquitto: Mosquitto) -> None:
    """The receiver reads plain requests on its fast path and leaves those with MQTT 5 properties to paho:
    interleaved on one connection, each is answered once, on its Response Topic with its Correlation Data or on
    the device's response topic, and the money moves once per grant."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    devices, _ = world
    replies: dict[bytes, tuple[str, dict[str, Any]]] = {}
    arrived = asyncio.Event()
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="dev5",
                              protocol=aiomqtt.ProtocolVersion.V5) as dev5:
        await dev5.subscribe("replies/dA/#", qos=1)

        async def pump() -> None:
            async for m in dev5.messages:
                correlation = getattr(m.properties, "CorrelationData", b"")
                replies[bytes(correlation)] = (m.topic.value, orjson.loads(m.payload))
                arrived.set()

        pumping = asyncio.create_task(pump())
        try:
            for i in range(6):
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.ResponseTopic = f"replies/dA/{i}"
                props.CorrelationData = f"corr-{i}".encode()
                await dev5.publish("prepaid/dA/authorize", orjson.dumps({"req": f"v5-{i}", "units": "2"}), qos=1,
                                   properties=props)
                await devices.send("dA", "authorize", {"req": f"plain-{i}", "units": "2"})
            async with asyncio.timeout(10):
                while len(replies) < 6:
                    arrived.clear()
                    await arrived.wait()
        finally:
            pumping.cancel()
            await asyncio.gather(pumping, return_exceptions=True)
    assert sorted(replies) == [f"corr-{i}".encode() for i in range(6)]
    for i in range(6):
        topic, doc = replies[f"corr-{i}".encode()]
        assert topic == f"replies/dA/{i}" and doc["req"] == f"v5-{i}" and doc["ok"]
        assert f"v5-{i}" not in devices.answers  # not also on the device's response topic
        plain = await devices.answer(f"plain-{i}")
        assert len(plain) == 1 and plain[0]["ok"]
    # twelve grants of 0.50 EUR held against 10.00, each once
    assert await money(pool, "A") == (Decimal("4.00"), Decimal("6.00"))
