"""Device side of prepaid: MQTT request/response against a real hub and Mosquitto (with block/restore
commands and the GraphQL subscription), and the CoAP resource with aiocoap and libcoap clients."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiocoap
import aiomqtt
import cbor2
import orjson
import psycopg
import pytest
import websockets
from psycopg_pool import AsyncConnectionPool

from tests.conftest import Mosquitto
from tests.integration.test_prepaid_hubs import load_plan, seed, start_hubs
from tests.peers import free_port, require_binary
from usagehub.adapters.base import AdapterSettings
from usagehub.adapters.coap import FACTORY, CoapConfig
from usagehub.adapters.coap.adapter import CoapAdapter
from usagehub.prepaid.service import FlatPricer, PrepaidService
from usagehub.runtime.config import SHIPPED_PROFILES
from usagehub.runtime.profile_files import load_profiles
from usagehub.storage.registry import DeviceDirectorySql, Registry

pytestmark = [pytest.mark.integration]

SUBSCRIBE = "subscription { prepaidEvents(accountId: \"p2\") { kind balance funds currency } }"


class Device:
    """A meter on MQTT: asks for credit, reads its answers and commands."""

    def __init__(self, client: aiomqtt.Client, device_id: str) -> None:
        self.client, self.device_id = client, device_id
        self.answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def pump(self) -> None:
        async for m in self.client.messages:
            queue = self.commands if m.topic.value.endswith("/cmd") else self.answers
            queue.put_nowait(orjson.loads(m.payload))

    async def ask(self, operation: str, payload: bytes) -> dict[str, Any]:
        """Publish a request and return its answer: the one carrying its ``req`` (answers are at least once,
        so a repeated answer to an earlier request may still be on its way and is skipped)."""
        try:
            req = orjson.loads(payload).get("req")
        except (orjson.JSONDecodeError, AttributeError):
            req = None
        await self.client.publish(f"prepaid/{self.device_id}/{operation}", payload, qos=1)
        async with asyncio.timeout(10):
            while True:
                answer = await self.answers.get()
                if answer.get("req") == req:
                    return answer


@contextlib.asynccontextmanager
async def device(port: int, device_id: str) -> AsyncIterator[Device]:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"dev-{device_id}") as client:
        d = Device(client, device_id)
        await client.subscribe([(f"prepaid/{device_id}/response", 1), (f"meters/{device_id}/cmd", 1)])
        task = asyncio.create_task(d.pump())
        try:
            yield d
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def subscription(port: int, key: str, events: list[dict[str, Any]], ready: asyncio.Event) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{port}/graphql", subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                                  additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        await ws.send(orjson.dumps({"type": "connection_init"}).decode())
        assert orjson.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(orjson.dumps({"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIBE}}).decode())
        ready.set()
        async for raw in ws:
            message = orjson.loads(raw)
            assert message["type"] == "next", message
            events.append(message["payload"]["data"]["prepaidEvents"])


def reading(seq: int, wh: int) -> bytes:
    ts = datetime.now(UTC) - timedelta(hours=2) + timedelta(minutes=seq)
    return orjson.dumps({"seq": seq, "ts": ts.isoformat(), "energy_wh": wh, "boot": 1})


async def until(predicate: Any) -> None:
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 — the subscription task appends to a list
            await asyncio.sleep(0.05)


async def commands_sent(database_url: str) -> None:
    """Wait until every block/restore event so far has had its device commands sent."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn, asyncio.timeout(30):
        while True:
            cur = await conn.execute("SELECT count(*) FROM prepaid_events WHERE commands_sent_at IS NULL "
                                     "AND kind IN ('blocked', 'restored')")
            row = await cur.fetchone()
            if row is not None and row[0] == 0:
                return
            await asyncio.sleep(0.1)


def test_mqtt_authorize_usage_blocks_and_top_up_restores(database_url: str, mosquitto: Mosquitto, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.integration.hubproc import usagehub

    assert usagehub("seed", str(seed(tmp_path, {"m2": "p2"})), "--database-url", database_url).returncode == 0
    asyncio.run(load_plan(database_url))  # 0.25 EUR/kWh + 19 % VAT = 0.2975
    (hub,) = start_hubs(1, database_url, mosquitto, tmp_path, monkeypatch)
    try:
        key = hub.key("admin")
        for q in ('mutation { configurePrepaid(accountId: "p2", lowBalanceThreshold: "1") { blocked } }',
                  'mutation { topUp(accountId: "p2", amount: "2.00", paymentRef: "p-1") { entryId } }'):
            assert "errors" not in hub.graphql(q, key)

        async def scenario() -> list[dict[str, Any]]:
            events: list[dict[str, Any]] = []
            ready = asyncio.Event()
            sub = asyncio.create_task(subscription(hub.port, key, events, ready))
            await asyncio.wait_for(ready.wait(), 10)
            await asyncio.sleep(0.3)
            # Configuring the account blocked it (no funds yet) and the top-up restored it: those two commands
            # must be out before the device listens, or a late one (the sweep resends what failed while the
            # hub's client connected) is taken below for the block that the metered usage causes.
            await commands_sent(database_url)
            async with device(mosquitto.port, "m2") as d:
                await asyncio.sleep(1.0)  # the hub's prepaid client subscribed at start; give it a moment
                grant = await d.ask("authorize", b'{"req": "a1", "units": "2"}')
                assert grant["ok"] and grant["req"] == "a1" and Decimal(grant["amount"]) == Decimal("0.595"), grant
                again = await d.ask("authorize", b'{"req": "a1", "units": "2"}')  # a redelivery: same grant
                assert again["reservation"] == grant["reservation"]
                done = await d.ask("commit", orjson.dumps({"req": "c1", "reservation": grant["reservation"],
                                                           "used": "1"}))
                assert done["ok"] and done["state"] == "committed", done
                assert Decimal(done["charged"]) == Decimal("0.2975")
                bad = await d.ask("authorize", b"\xff\x00 not json")
                assert not bad["ok"] and bad["reason"] == "BAD_REQUEST"
                # 7 kWh of metered usage (2.0825 EUR) against 1.7025 EUR: blocked, 0.38 in arrears
                await mosquitto_pub(mosquitto, "meters/m2/reading", reading(1, 1000), reading(2, 8000))
                assert await asyncio.wait_for(d.commands.get(), 15) == {"command": "block"}
                denied = await d.ask("authorize", b'{"req": "a2", "units": "1"}')
                assert not denied["ok"] and denied["reason"] == "ACCOUNT_BLOCKED"
                body = hub.graphql('mutation { topUp(accountId: "p2", amount: "5.00", paymentRef: "p-2") '
                                   "{ balanceAfter } }", key)
                assert "errors" not in body, body
                # Commands go out at least once (the sweep resends any not yet marked sent): a repeated block
                # may arrive first; devices apply commands idempotently.
                restore = await asyncio.wait_for(_next_other(d.commands, {"command": "block"}), 15)
                assert restore == {"command": "restore"}
                await until(lambda: len(events) >= 3)
            sub.cancel()
            await asyncio.gather(sub, return_exceptions=True)
            return events

        events = asyncio.run(scenario())
        assert [e["kind"] for e in events] == ["low_balance", "blocked", "restored"]
        assert Decimal(events[1]["funds"]) == 0 and Decimal(events[2]["funds"]) == Decimal("4.62")
        body = hub.graphql('{ prepaidAccount(accountId: "p2") { balance arrears blocked '
                           "ledger(first: 20) { edges { node { kind amount balanceAfter } } } } }", key)
        account = body["data"]["prepaidAccount"]
        assert Decimal(account["balance"]) == Decimal("4.62") and Decimal(account["arrears"]) == 0
        assert not account["blocked"]
        ledger = [e["node"] for e in account["ledger"]["edges"]]
        assert sum(Decimal(e["amount"]) for e in ledger) == Decimal("4.62")
    finally:
        assert hub.terminate() == 0


async def mosquitto_pub(broker: Mosquitto, topic: str, *payloads: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="test-meter") as client:
        for p in payloads:
            await client.publish(topic, p, qos=1)


# --- CoAP -------------------------------------------------------------------------------------------

@pytest.fixture
async def coap_hub(pool: AsyncConnectionPool, tmp_path: Path) -> AsyncIterator[tuple[int, PrepaidService]]:
    reg = Registry(pool)
    await reg.upsert_account(account_id="p3", prepaid=True)
    await reg.upsert_device(device_id="w1", profile_id="acme-coap-open")
    await reg.upsert_device(device_id="w9", profile_id="acme-em340")  # a profile that needs OSCORE
    await reg.bind(device_id="w1", account_id="p3", valid_from=datetime(2026, 1, 1, tzinfo=UTC))
    service = PrepaidService(pool, FlatPricer({"water": Decimal("0.01")}))
    await service.top_up(account_id="p3", amount=Decimal(1), payment_ref="coap-1")
    port = free_port(socket.SOCK_DGRAM)
    settings = AdapterSettings(profiles=load_profiles(SHIPPED_PROFILES), devices=DeviceDirectorySql(pool),
                               data_dir=tmp_path, prepaid=service)
    adapter = FACTORY.create(CoapConfig(host="127.0.0.1", port=port, oscore=False), settings)
    assert isinstance(adapter, CoapAdapter)
    await adapter.__aenter__()
    try:
        yield port, service
    finally:
        await adapter.__aexit__(None, None, None)
        await service.close()


async def test_coap_resource_with_aiocoap(coap_hub: tuple[int, PrepaidService]) -> None:
    port, service = coap_hub
    ctx = await aiocoap.Context.create_client_context()
    try:
        async def post(path: str, doc: object, fmt: int = 60) -> tuple[aiocoap.Code, dict[str, Any]]:
            payload = cbor2.dumps(doc) if fmt == 60 else orjson.dumps(doc)
            request = aiocoap.Message(code=aiocoap.POST, uri=f"coap://127.0.0.1:{port}/{path}", payload=payload)
            request.opt.content_format = fmt
            response = await ctx.request(request).response
            body = cbor2.loads(response.payload) if fmt == 60 else orjson.loads(response.payload)
            return response.code, body

        code, grant = await post("prepaid/w1/authorize", {"req": 1, "units": "40", "product": "water"})
        assert code == aiocoap.CONTENT and grant["ok"] and grant["amount"] == "0.40", grant
        code, done = await post("prepaid/w1/commit", {"reservation": grant["reservation"], "used": "30"}, fmt=50)
        assert done["state"] == "committed" and done["charged"] == "0.30"
        _, denied = await post("prepaid/w1/authorize", {"units": "100", "product": "water"})
        assert denied == {"req": None, "ok": False, "reason": "INSUFFICIENT_BALANCE",
                          "detail": "needs 1.00 EUR, may spend 0.70"}
        code, _ = await post("prepaid/w9/authorize", {"units": "1"})
        assert code == aiocoap.UNAUTHORIZED  # unprotected requests only for profiles that allow them
        code, _ = await post("prepaid/w1/launch", {})
        assert code == aiocoap.NOT_FOUND
        response = await ctx.request(aiocoap.Message(code=aiocoap.POST, uri=f"coap://127.0.0.1:{port}/prepaid/w1/"
                                                     "authorize", payload=b"\xff\xfe\x00")).response
        assert response.code == aiocoap.BAD_REQUEST
    finally:
        await ctx.shutdown()
    state = await service.account("p3")
    assert state is not None and state.balance == Decimal("0.70")


async def test_coap_resource_with_libcoap(coap_hub: tuple[int, PrepaidService]) -> None:
    port, _ = coap_hub
    binary = require_binary("coap-client-notls")
    proc = await asyncio.create_subprocess_exec(
        binary, "-B", "10", "-m", "post", "-t", "50", "-e", '{"req": "x", "units": "5", "product": "water"}',
        f"coap://127.0.0.1:{port}/prepaid/w1/authorize", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    answer = orjson.loads(out.strip().splitlines()[-1])
    assert answer["ok"] and answer["req"] == "x" and answer["units"] == "5", (out, err)


async def _next_other(queue: asyncio.Queue[Any], repeat: Any) -> Any:
    """The next item of ``queue`` that is not a repetition of ``repeat``."""
    while True:
        item = await queue.get()
        if item != repeat:
            return item
