"""The analytics page in a real headless Chromium, its exports and GraphQL over a real server and PostgreSQL."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import uvicorn
from psycopg_pool import AsyncConnectionPool

from tests.integration.browser import png_colours
from tests.peers import free_port, require_binary
from tests.storage.analytics_data import Row, add_accounts, copy_points
from usagehub.analytics.service import AnalyticsService
from usagehub.graphql.context import Services
from usagehub.storage.keys import ApiKeys
from usagehub.storage.queries import Reads
from usagehub.storage.registry import Registry
from usagehub.web.analytics import analytics_routes
from usagehub.web.app import create_app

TODAY = date(2026, 10, 31)


async def _replay(_: list[int]) -> list[object]:
    return []


@pytest.fixture
async def server(pool: AsyncConnectionPool) -> AsyncIterator[tuple[str, ApiKeys, AnalyticsService]]:
    """A hub web app with the analytics routes on a free port, over fleet data of two months."""
    await add_accounts(pool, {f"acc-{i}": "Europe/Berlin" for i in range(6)})
    rows: list[Row] = []
    for i in range(6):
        for d in range(61):
            for hour in (7, 19):
                ts = datetime(2026, 9, 1, hour, tzinfo=UTC) + timedelta(days=d)
                value = Decimal(1 + i + (d % 7)) * (3 if hour == 19 else 1)
                rows.append((f"acc-{i}", "electricity", f"m{i}", "energy", "usage", ts, value))
    await copy_points(pool, rows)
    service = AnalyticsService(pool)
    await service.refresh_features(TODAY)
    keys = ApiKeys(pool)
    services = Services(registry=Registry(pool), reads=Reads(pool), ingest_totals={}, replay=_replay, extra={},
                        analytics=service)
    app = create_app(services, keys, ready=lambda: True,
                     extra_routes=analytics_routes(service, keys, today=lambda: TODAY))
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(uv.serve())
    while not uv.started:  # noqa: ASYNC110 — uvicorn offers only a flag
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}", keys, service
    uv.should_exit = True
    await task


async def test_page_draws_fleet_and_load_profile_in_chromium(server: tuple[str, ApiKeys, AnalyticsService],
                                                             tmp_path: Path) -> None:
    chromium = require_binary("chromium")
    url, keys, _ = server
    token, _ = await keys.create(role="analytics")
    shot = tmp_path / "page.png"
    proc = await asyncio.create_subprocess_exec(
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=8000", "--window-size=1000,700",
        f"--screenshot={shot}", f"{url}/analytics#key={token}&days=61",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    await asyncio.wait_for(proc.wait(), 60)
    data = shot.read_bytes()
    assert len(data) > 5000
    colours = len(png_colours(data))
    # A blank or error page has a handful of colours; the polyline and red/green bars add many (anti-aliasing).
    assert colours > 20, colours
    async with httpx.AsyncClient() as client:  # the page's own feeds, with the same key
        fleet = (await client.get(f"{url}/analytics/api/fleet?days=61&product=energy",
                                  headers={"authorization": f"Bearer {token}"})).json()
        profile = (await client.get(f"{url}/analytics/api/profile",
                                    headers={"authorization": f"Bearer {token}"})).json()
    assert len(fleet["points"]) == 61
    assert profile["account"].startswith("p_") and sum(Decimal(s) for s in profile["hour_shares"]) == 1


async def test_exports_csv_parquet_and_privacy(server: tuple[str, ApiKeys, AnalyticsService]) -> None:
    import pyarrow.parquet as pq

    url, keys, service = server
    plain, _ = await keys.create(role="analytics")
    granted, principal = await keys.create(role="analytics")
    await service.grant_personal(principal.key_id)
    billing, _ = await keys.create(role="billing")
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{url}/analytics/export/features.csv")).status_code == 401
        refused = await client.get(f"{url}/analytics/export/features.csv",
                                   headers={"authorization": f"Bearer {billing}"})
        assert refused.status_code == 403
        csv_text = (await client.get(f"{url}/analytics/export/features.csv",
                                     headers={"authorization": f"Bearer {plain}"})).text
        personal = (await client.get(f"{url}/analytics/export/features.csv",
                                     headers={"authorization": f"Bearer {granted}"})).text
        parquet = await client.get(f"{url}/analytics/export/features.parquet?product=energy",
                                   headers={"authorization": f"Bearer {plain}"})
        series = await client.get(f"{url}/analytics/export/series.parquet?days=61&product=energy",
                                  headers={"authorization": f"Bearer {plain}"})
        mixed = await client.get(f"{url}/analytics/export/series.csv?days=61",
                                 headers={"authorization": f"Bearer {plain}"})
        query = """{ consumptionSeries(scope: FLEET, since: "2026-10-01", until: "2026-11-01", bucket: WEEK,
                     product: "energy") { start quantity accounts }
                     topConsumers(product: "energy", since: "2026-10-01", until: "2026-11-01", first: 2)
                     { accountId quantity } }"""
        gql = (await client.post(f"{url}/graphql", json={"query": query},
                                 headers={"authorization": f"Bearer {plain}"})).json()
    assert "acc-0" not in csv_text and "p_" in csv_text and "acc-0" in personal
    table = pq.read_table(io.BytesIO(parquet.content))
    assert table.num_rows == 6 and str(table.schema.field("avg_daily").type) == "decimal128(38, 9)"
    days = pq.read_table(io.BytesIO(series.content))
    assert days.num_rows == 61
    assert mixed.status_code == 400 and mixed.json()["code"] == "PRODUCT_REQUIRED"  # kWh + counts: refused
    assert "errors" not in gql, gql
    weeks = gql["data"]["consumptionSeries"]
    assert weeks[0]["start"] == "2026-09-28T00:00:00" and all(w["accounts"] == 6 for w in weeks)
    top = gql["data"]["topConsumers"]
    assert top[0]["accountId"].startswith("p_") and Decimal(top[0]["quantity"]) > Decimal(top[1]["quantity"])
