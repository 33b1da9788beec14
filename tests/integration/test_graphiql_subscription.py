"""GraphiQL runs a subscription in Chromium: graphql-transport-ws on /graphql, the API key in connection_init."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from websockets.asyncio.client import connect

from tests.integration.browser import Browser
from tests.integration.hubproc import EmbeddedBrokerHub, usagehub
from tests.peers import require_binary, time_scale
from usagehub.core.alerts import NewAlert
from usagehub.storage.alerts import raise_device_alerts
from usagehub.storage.pool import open_pool
from usagehub.storage.registry import Registry

pytestmark = pytest.mark.integration
SUBSCRIBE = "subscription { alerts { kind message } }"


async def _socket(port: int, params: dict[str, Any] | None) -> websockets.asyncio.client.ClientConnection:
    ws = await connect(f"ws://127.0.0.1:{port}/graphql", subprotocols=["graphql-transport-ws"])  # type: ignore[list-item]
    await ws.send(orjson.dumps({"type": "connection_init", **({"payload": params} if params else {})}).decode())
    return ws


async def _refused(port: int, params: dict[str, Any] | None) -> int | None:
    async with await _socket(port, params) as ws:
        with contextlib.suppress(websockets.ConnectionClosed):
            async with asyncio.timeout(5 * time_scale()):
                while True:
                    assert orjson.loads(await ws.recv())["type"] != "connection_ack", params
        return ws.close_code


async def test_graphiql_runs_a_subscription_with_the_key_and_sees_an_alert(database_url: str, tmp_path: Path) -> None:
    require_binary("chromium")
    hub = EmbeddedBrokerHub(database_url, tmp_path / "data")
    await asyncio.to_thread(hub.start)
    pool = await open_pool(database_url, min_size=1, max_size=2)
    try:
        key = await asyncio.to_thread(hub.key, "operator")
        created = await asyncio.to_thread(usagehub, "keys", "create", "--role", "admin", "--tenant", "other",
                                          *hub.settings)
        other = created.stdout.strip().splitlines()[-1]
        await Registry(pool).upsert_device(device_id="gq-panel", tenant="default", profile_id="acme-alarm-ax")

        # The door: a socket with no key, a forged key, or a key in the wrong place is refused (4403).
        assert await _refused(hub.port, None) == 4403
        assert await _refused(hub.port, {"Authorization": "Bearer uh_forged_key"}) == 4403
        assert await _refused(hub.port, {"Authorization": key}) == 4403  # no "Bearer "
        # Another tenant's admin subscribes too and must not see this tenant's alert.
        stranger = await _socket(hub.port, {"Authorization": f"Bearer {other}"})
        assert orjson.loads(await stranger.recv())["type"] == "connection_ack"
        await stranger.send(orjson.dumps({"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIBE}}).decode())

        async with Browser(tmp_path) as browser:
            await browser.open(f"http://127.0.0.1:{hub.port}/graphql#key={key}")
            await browser.wait_for("document.getElementById('keystate').innerText === 'key set'")
            await browser.wait_for("!!document.querySelector('.graphiql-query-editor .CodeMirror')")
            await browser.click(".graphiql-query-editor .CodeMirror-lines")
            await browser.key("a", code=65, modifiers=2)  # Ctrl+A: replace the sample text
            await browser.type(SUBSCRIBE)
            await browser.click(".graphiql-execute-button")
            pane = "(() => { const r = document.querySelector('.graphiql-response'); return r ? r.innerText : ''; })()"
            seen, deadline = "", asyncio.get_running_loop().time() + 30 * time_scale()
            n = 0
            while "cover opened" not in seen and asyncio.get_running_loop().time() < deadline:
                n += 1  # raise alerts until the page shows one (the page subscribes asynchronously)
                async with pool.connection() as conn:
                    await raise_device_alerts(conn, [NewAlert(
                        kind="tamper", severity="critical", device_id="gq-panel", message=f"cover opened {n}",
                        raised_at=datetime.now(UTC), dedupe_key=f"gq-test-{n}")])
                await asyncio.sleep(0.3)
                seen = await browser.eval(pane) or ""
            assert '"kind": "tamper"' in seen, f"the response pane shows: {seen!r}"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1):
                leaked = await stranger.recv()
                pytest.fail(f"another tenant received {leaked!r}")
        await stranger.close()
    finally:
        await pool.close()
        assert await asyncio.to_thread(hub.terminate) == 0
