"""The operator console in headless Chromium, used as a person would: sign in, read and acknowledge an alert,
drill into revenue assurance, search a meter — with the screenshot decoded, not only saved."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import uvicorn
from psycopg_pool import AsyncConnectionPool

from tests.integration.browser import Browser, png_colours
from tests.peers import free_port
from tests.storage.test_operations import build, panel
from usagehub.core.alerts import NewAlert
from usagehub.core.events import RawMessage
from usagehub.operations.feed import AlertFeed
from usagehub.storage.alerts import raise_device_alerts
from usagehub.storage.events import QuarantineItem, insert_quarantine

pytestmark = pytest.mark.integration

CRITICAL_RED = bytes.fromhex("cf222e")


@pytest.fixture
async def console(pool: AsyncConnectionPool) -> AsyncIterator[tuple[str, dict[str, str]]]:
    feed = AlertFeed(str(pool.conninfo), pool)  # the subscription `alerts`, heard over LISTEN as in a hub
    listening = asyncio.create_task(feed.run())
    await asyncio.wait_for(feed.listening.wait(), 10)
    app, tokens, _ = await build(pool, {"alert_feed": feed})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 — uvicorn offers only a flag
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}", tokens
    server.should_exit = True
    await task
    listening.cancel()
    await asyncio.gather(listening, return_exceptions=True)


async def test_admin_acknowledges_an_alert_drills_down_and_edits_a_meter_type(console: tuple[str, dict[str, str]],
                                                                             tmp_path: Path) -> None:
    url, tokens = console
    async with Browser(tmp_path) as page:
        await page.open(f"{url}/console")
        await page.eval("document.querySelector('#key').focus()")
        await page.type(tokens["admin"])
        await page.key("Enter", code=13, text="\r")  # submits the sign-in form from the keyboard
        await page.wait_for("document.querySelectorAll('#alerts-rows tr').length === 1")
        assert await page.eval("document.getElementById('login').hidden")
        row = await page.eval("document.querySelector('#alerts-rows tr').innerText")
        assert "tamper" in row and "p1" in row and "open" in row
        shot = await page.screenshot(tmp_path / "console.png")  # kept for a person to look at
        colours = png_colours(shot)
        assert CRITICAL_RED in colours and len(colours) > 20  # the severity is drawn in red, the table is there

        await page.click("#alerts-rows input[type=checkbox]")
        assert await page.eval("document.querySelector('#alerts-rows input').checked")
        await page.click("#alerts-ack")
        await page.wait_for("document.querySelectorAll('#alerts-rows tr').length === 0")  # open only: it is gone
        assert "acknowledged 1 alerts" in await page.eval("document.getElementById('status').textContent")

        await page.click("#tab-assurance")
        await page.key("ArrowRight", code=39)  # keyboard moves to the next tab and back
        assert await page.eval("document.getElementById('inspect').hidden") is False
        await page.key("ArrowLeft", code=37)
        await page.eval("document.getElementById('ra-since').value = '2026-11-18'")
        await page.eval("document.getElementById('ra-until').value = '2026-11-23'")
        await page.click("#assurance-form button[type=submit]")
        await page.wait_for("document.querySelectorAll('#ra-rows tr').length > 0")
        text = await page.eval("document.getElementById('ra-rows').innerText")
        assert "a1" in text and "energy" in text and "(unbound devices)" in text and "b1" not in text
        await page.click("#ra-rows td[tabindex='0']")  # drill down into account a1
        await page.wait_for("document.getElementById('ra-account').value === 'a1'")
        await page.wait_for("!document.getElementById('ra-rows').innerText.includes('unbound devices')")

        await page.click("#tab-inspect")
        await page.eval("document.querySelector('#inspect-q').focus()")
        await page.type("a1")  # an account: the meters of the devices it holds
        await page.key("Enter", code=13, text="\r")
        await page.wait_for("document.querySelectorAll('#inspect-rows tr').length > 0")
        meters = await page.eval("document.getElementById('inspect-rows').innerText")
        assert "energy" in meters and "m1" in meters and "p1" in meters and "m2" not in meters
        await page.eval("[...document.querySelectorAll('#inspect-rows td')].find(td => td.textContent === 'm1')"
                        ".focus()")
        await page.key("Enter", code=13, text="\r")  # the device's recent events, from the keyboard
        await page.wait_for("document.querySelectorAll('#events-rows tr').length === 5")
        first = await page.eval("document.querySelector('#events-rows tr').innerText")
        assert "2026-11-19T16:00" in first and "energy" in first  # the newest reading first

        await page.click("#tab-quarantine")
        await page.eval("document.querySelector('#q-device').focus()")
        await page.type("p1")
        await page.click("#q-form button[type=submit]")
        await page.wait_for("document.querySelectorAll('#q-rows tr').length === 1")
        assert "tamper" in await page.eval("document.getElementById('q-rows').innerText")  # the raw payload
        await page.eval("document.getElementById('q-since').value = '2030-01-01T00:00'")
        await page.click("#q-form button[type=submit]")
        await page.wait_for("document.querySelectorAll('#q-rows tr').length === 0")
        await page.click("#tab-types")
        await page.wait_for("document.getElementById('types-list').options.length > 5")
        await page.eval("(() => { const s = document.getElementById('types-list'); s.value = 'acme-em340';"
                      " s.dispatchEvent(new Event('change')); })()")
        yaml = await page.eval("document.getElementById('types-yaml').value")
        assert "energy_wh" in yaml
        await page.eval("document.getElementById('types-yaml').value = document.getElementById('types-yaml')"
                      ".value.replace('kind: cumulative', 'kind: sideways')")
        await page.click("#types-save")
        await page.wait_for("document.querySelectorAll('#types-errors li').length > 0")
        error = await page.eval("document.getElementById('types-errors').innerText")
        assert "meters.energy.kind" in error and "line 14" in error
        await page.eval("document.getElementById('types-yaml').value = document.getElementById('types-yaml')"
                        ".value.replace('kind: sideways', 'kind: cumulative').replace('single-phase', 'one-phase')")
        await page.click("#types-save")  # corrected: saved as a new version, listed with its author
        await page.wait_for("document.getElementById('status').textContent.includes('saved acme-em340 version 1')")
        await page.wait_for("document.getElementById('types-versions').options.length === 1")
        assert (await page.eval("document.getElementById('types-versions').options[0].text")).startswith("v1 · ")
        assert "one-phase" in await page.eval("document.getElementById('types-yaml').value")
        assert await page.eval("document.querySelectorAll('#types-errors li').length") == 0
        labelled = await page.eval("[...document.querySelectorAll('input, select, textarea')].every(i => "
                                 "i.labels.length > 0 || i.getAttribute('aria-label'))")
        assert labelled


async def test_a_key_of_another_tenant_sees_none_of_this_tenants_alerts(console: tuple[str, dict[str, str]],
                                                                       tmp_path: Path) -> None:
    url, tokens = console
    async with Browser(tmp_path) as page:
        await page.open(f"{url}/console#key={tokens['b-operator']}")
        await page.wait_for("document.querySelectorAll('#alerts-rows tr').length === 1")
        row = await page.eval("document.querySelector('#alerts-rows tr').innerText")
        assert "p2" in row and "p1" not in row
        assert await page.eval("location.hash") == ""  # the key leaves the address bar


async def test_consumer_sees_their_consumption_chart_on_a_phone_screen(console: tuple[str, dict[str, str]],
                                                                     tmp_path: Path) -> None:
    url, tokens = console
    async with httpx.AsyncClient() as client:
        made = (await client.post(f"{url}/graphql", headers={"Authorization": f"Bearer {tokens['billing']}"},
                                  json={"query": 'mutation { createConsumerToken(accountId: "a1") { token } }'})).json()
    token = made["data"]["createConsumerToken"]["token"]
    async with Browser(tmp_path, width=390, height=844) as page:
        await page.open(f"{url}/me#token={token}")
        await page.wait_for("document.querySelectorAll('#daily canvas').length === 1")
        options = await page.eval("[...document.getElementById('product').options].map(o => o.value)")
        assert "energy" in options and "door_openings" in options
        await page.eval("(() => { const s = document.getElementById('product'); s.value = 'energy';"
                      " s.dispatchEvent(new Event('change')); })()")
        await page.wait_for("document.querySelectorAll('#daily canvas').length === 1")
        await page.wait_for("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
        shot = await page.screenshot(tmp_path / "me.png")
        colours = png_colours(shot)
        assert any(abs(c[0] - 0x09) < 40 and abs(c[1] - 0x69) < 40 and c[2] > 0xb0 for c in colours)  # bars drawn


async def test_consumer_page_shows_times_in_the_accounts_zone_not_the_phones(console: tuple[str, dict[str, str]],
                                                                            pool: AsyncConnectionPool,
                                                                            tmp_path: Path) -> None:
    url, tokens = console
    async with pool.connection() as conn:  # a1 is in Europe/Berlin; a top-up at 23:30 UTC is 00:30 there
        await conn.execute("UPDATE accounts SET prepaid = true WHERE account_id = 'a1'")
        await conn.execute("INSERT INTO ledger_entries (account_id, kind, amount, currency, payment_ref, created_at) "
                           "VALUES ('a1', 'topup', 20, 'EUR', 'pay-zone', '2026-11-20T23:30:00Z')")
        await conn.execute("INSERT INTO prepaid_events (account_id, kind, balance, funds, currency, at) "
                           "VALUES ('a1', 'restored', 20, 20, 'EUR', '2026-11-20T23:31:00Z')")
        for rid, state, expires in (("r-open", "open", "2099-01-01T10:00:00Z"), ("r-done", "committed", "2099-01-01"),
                                    ("r-old", "open", "2026-01-01T00:00:00Z")):  # only the first is reserved now
            await conn.execute("INSERT INTO prepaid_reservations (reservation_id, account_id, device_id, product, "
                               "units, hold, state, created_at, expires_at) VALUES (%s, 'a1', 'm1', 'energy', 2, "
                               "'0.60', %s, '2026-11-20T23:32:00Z', %s)", (rid, state, expires))
    async with httpx.AsyncClient() as client:
        made = (await client.post(f"{url}/graphql", headers={"Authorization": f"Bearer {tokens['billing']}"},
                                  json={"query": 'mutation { createConsumerToken(accountId: "a1") { token } }'})).json()
    token = made["data"]["createConsumerToken"]["token"]
    async with Browser(tmp_path, width=390, height=844, timezone="America/Los_Angeles") as page:
        await page.open(f"{url}/me#token={token}")
        await page.wait_for("document.querySelectorAll('#ledger tr').length === 1")
        ledger = await page.eval("document.getElementById('ledger').innerText")
        events = await page.eval("document.getElementById('events').innerText")
        assert "2026-11-21 00:30" in ledger and "topup" in ledger and "20" in ledger, ledger
        assert "2026-11-21 00:31" in events and "restored" in events, events
        reserved = await page.eval("[...document.querySelectorAll('#reservations tr')].map(r => r.innerText)")
        assert reserved == ["2026-11-21 00:32\t2 energy · m1\t0.60 EUR\t2099-01-01 11:00"], reserved
        assert "23:30" not in ledger and "15:30" not in ledger  # neither UTC nor the phone's own zone
        assert "Europe/Berlin" in await page.eval("document.getElementById('status').textContent")
        assert await page.eval("document.getElementById('balance').textContent") == "20 EUR"
        labelled = await page.eval("[...document.querySelectorAll('input, select')].every(i => i.labels.length > 0)")
        assert labelled


async def test_alerts_arrive_live_over_the_subscription_and_only_the_tenants(console: tuple[str, dict[str, str]],
                                                                            pool: AsyncConnectionPool,
                                                                            tmp_path: Path) -> None:
    url, tokens = console
    async with Browser(tmp_path) as page:
        await page.open(f"{url}/console#key={tokens['operator']}")
        await page.wait_for("document.querySelectorAll('#alerts-rows tr').length === 1")
        await page.wait_for("document.getElementById('live').textContent === 'live: on'")
        started = asyncio.get_running_loop().time()
        for n in range(40):  # the page subscribes asynchronously: raise until one arrives (well before the poll)
            async with pool.connection() as conn:
                await raise_device_alerts(conn, [
                    NewAlert(kind="tamper", severity="critical", device_id=device, message=f"live {device} {n}",
                             raised_at=datetime.now(UTC), dedupe_key=f"live:{device}:{n}")
                    for device in ("p2", "p1")])  # another tenant's first
            if await page.eval("document.querySelectorAll('#live-log li').length > 0"):
                break
            await asyncio.sleep(0.25)
        await page.wait_for("document.querySelectorAll('#alerts-rows tr').length >= 2", timeout_s=10)
        assert asyncio.get_running_loop().time() - started < 25  # the 30 s poll did not bring it
        log = await page.eval("document.getElementById('live-log').innerText")
        assert "live p1" in log and "p2" not in log
        await page.wait_for("document.getElementById('status').textContent.includes('new critical alert: tamper')",
                            timeout_s=10)  # announced, and still announced after the table reloaded
        assert "p2" not in await page.eval("document.getElementById('alerts-rows').innerText")


async def test_revenue_assurance_days_are_whole_local_days_of_the_account(console: tuple[str, dict[str, str]],
                                                                         pool: AsyncConnectionPool,
                                                                         tmp_path: Path) -> None:
    url, tokens = console
    async with pool.connection() as conn:  # 23:30 UTC on the 17th is 00:30 on the 18th in a1's Berlin
        message = panel("p1", 60, "junk")
        late = RawMessage(transport="mqtt", topic=message.topic, payload=message.payload,
                          received_at=datetime(2026, 11, 17, 23, 30, tzinfo=UTC))
        await insert_quarantine(conn, [QuarantineItem(message=late, reason="refused", device_id="p1")])
    async with Browser(tmp_path) as page:
        await page.open(f"{url}/console#key={tokens['operator']}")
        await page.wait_for("document.querySelectorAll('#alerts-rows tr').length === 1")
        await page.click("#tab-assurance")
        await page.eval("document.getElementById('ra-since').value = '2026-11-18'")
        await page.eval("document.getElementById('ra-until').value = '2026-11-19'")
        await page.eval("document.getElementById('ra-account').value = 'a1'")
        await page.click("#assurance-form button[type=submit]")
        await page.wait_for("document.getElementById('status').textContent.endsWith(' rows')")
        rows = await page.eval("[...document.querySelectorAll('#ra-rows tr')].map(r => r.innerText)")
        assert [r.split("\t")[:5] for r in rows] == [["2026-11-18", "a1", "(messages)", "0", "1"]], rows
