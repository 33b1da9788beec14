"""GraphiQL is served by the hub: the page opens with no key, its assets are local, queries still need a key."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
from psycopg_pool import AsyncConnectionPool

from tests.peers import require_binary
from usagehub.graphql.context import Services
from usagehub.storage.keys import ApiKeys
from usagehub.storage.queries import Reads
from usagehub.storage.registry import Registry
from usagehub.web.app import create_app
from usagehub.web.graphiql import page


async def _replay(_: list[int]) -> list[object]:
    return []


async def test_page_without_key_local_assets_and_queries_need_a_key(pool: AsyncConnectionPool) -> None:
    keys = ApiKeys(pool)
    totals = {"messages": 3, "accepted": 2, "duplicates": 0, "quarantined": 1, "batches": 1}
    services = Services(registry=Registry(pool), reads=Reads(pool), ingest_totals=totals, replay=_replay, extra={})
    app = create_app(services, keys, ready=lambda: True)
    key, _ = await keys.create(role="admin")  # the hub's own tenant: it sees the ingest counters
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client:
        page = await client.get("/graphql", headers={"accept": "text/html,application/xhtml+xml"})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert len(sources) == 4 and all(s.startswith("/graphiql/static/") for s in sources), sources
        for src in sources:
            asset = await client.get(src)
            assert asset.status_code == 200 and len(asset.content) > 5000, src
        assert (await client.get("/graphiql/static/../app.py")).status_code == 404
        query = {"query": "{ ingestStats { messages } }"}
        assert (await client.post("/graphql", json=query)).status_code == 401
        assert (await client.post("/graphql", json=query, headers={"authorization": "Bearer uh_forged"})
                ).status_code == 401
        # A GET query (not the page) is GraphQL and needs the key too.
        assert (await client.get("/graphql", params=query, headers={"accept": "text/html"})).status_code == 401
        ok = await client.post("/graphql", json=query, headers={"authorization": f"Bearer {key}"})
        assert ok.json() == {"data": {"ingestStats": {"messages": 0}}}  # durable totals: nothing committed here


CASES = [  # query, operationName, runs over the WebSocket?
    ("subscription { alerts { kind } }", None, True),
    ("{ ingestStats { messages } }", None, False),
    ("# subscription in a comment\n{ a }", None, False),
    ('query Q { a } subscription S($x: String = "}") { b(x: $x) { c } }', "S", True),
    ("query Q { a } subscription S { b }", "Q", False),
    ("fragment F on Alert { kind } subscription { alerts { ...F } }", None, True),
    ("mutation { topUp(input: {amount: 1}) { id } }", None, False),
]


def test_the_page_sends_subscriptions_and_only_them_over_the_websocket(tmp_path: Path) -> None:
    """The page's own operation detector, run by node on the page's script (GraphiQL's AST can lag behind)."""
    node = require_binary("node")
    html = page()
    script = html[html.index("  function operations"):html.index("  function fetcher")]
    probe = tmp_path / "probe.js"
    probe.write_text(script + f"console.log(JSON.stringify({json.dumps(CASES)}.map(function (c) {{"
                     "return isSubscription({query: c[0], operationName: c[1]}); })));")
    done = subprocess.run([node, str(probe)], capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(done.stdout) == [expected for _, _, expected in CASES]
    assert 'wsConnectionParams: {Authorization: "Bearer " + key}' in html  # the key rides in connection_init
