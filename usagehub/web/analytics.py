"""The analytics page, its JSON feeds and CSV/Parquet exports, behind bearer API keys."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from usagehub.analytics.service import AnalyticsService
from usagehub.core.analytics.buckets import Bucket
from usagehub.core.csvsafe import SafeWriter
from usagehub.errors import DomainError
from usagehub.storage.keys import ApiKeys, Principal
from usagehub.storage.rollups import Scope

ROLES = ("admin", "analytics")
_SCALE = Decimal("0.000000001")  # Parquet decimal128(38, 9)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message


def analytics_routes(service: AnalyticsService, keys: ApiKeys,
                     today: Callable[[], date] = lambda: datetime.now(UTC).date()) -> list[BaseRoute]:
    """Routes: /analytics (page), /analytics/api/{fleet,profile}, /analytics/export/{features,series}.{csv,parquet}."""

    async def caller(request: Request) -> tuple[Principal, bool]:
        principal = await keys.from_header(request.headers.get("authorization", ""))
        if principal is None:
            raise _Refused(401, "missing or invalid API key: send Authorization: Bearer <key>")
        if principal.role not in ROLES:
            raise _Refused(403, f"role {principal.role!r} may not read analytics")
        return principal, await service.personal(principal)

    def guarded(handler: Callable[..., Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                principal, personal = await caller(request)
                result: Response = await handler(request, principal, personal)
                return result
            except _Refused as err:
                return JSONResponse({"error": err.message}, status_code=err.status)
            except DomainError as err:
                return JSONResponse({"error": str(err), "code": err.code}, status_code=400)
            except ValueError as err:
                return JSONResponse({"error": str(err), "code": "BAD_REQUEST"}, status_code=400)
        return endpoint

    def span(request: Request) -> tuple[date, date]:
        days = min(int(request.query_params.get("days", "90")), 3660)
        until = date.fromisoformat(request.query_params["until"]) if "until" in request.query_params \
            else today() + timedelta(days=1)
        return until - timedelta(days=days), until

    async def fleet(request: Request, principal: Principal, _: bool) -> Response:
        since, until = span(request)
        points = await service.series(tenant=principal.tenant, scope=Scope.FLEET, key=None,
                                      product=request.query_params.get("product"), bucket=Bucket.DAY,
                                      since=since, until=until)
        return JSONResponse({"since": since.isoformat(), "until": until.isoformat(),
                             "points": [{"start": p.label.date().isoformat(), "quantity": str(p.quantity)}
                                        for p in points]})

    async def profile(request: Request, principal: Principal, personal: bool) -> Response:
        shown = request.query_params.get("account")
        product = request.query_params.get("product")
        if shown:
            account = await service.resolve(principal.tenant, shown, personal)
        else:  # no account named: the biggest consumer of the last 30 days
            top = await service.top(tenant=principal.tenant, product=product or "energy", market=None,
                                    since=today() - timedelta(days=30), until=today() + timedelta(days=1), limit=1)
            if not top:
                return JSONResponse({"account": None, "hour_shares": []})
            account = top[0].account_id
        await service.account_zone(principal.tenant, account)
        rows = (await service.features(account, product))["products"]
        shares = [str(s) for s in rows[0]["hour_shares"]] if rows else []
        return JSONResponse({"account": await service.show(account, personal), "hour_shares": shares,
                             "product": rows[0]["product"] if rows else product})

    async def export(request: Request, principal: Principal, personal: bool) -> Response:
        what, fmt = request.path_params["what"], request.path_params["fmt"]
        if what == "series":
            since, until = span(request)
            points = await service.series(tenant=principal.tenant, scope=Scope.FLEET, key=None,
                                          product=request.query_params.get("product"), bucket=Bucket.DAY,
                                          since=since, until=until)
            columns = ["day", "quantity", "activity", "accounts"]
            rows = [[p.label.date(), p.quantity, p.activity, p.accounts] for p in points]
        else:
            columns, rows = await _feature_table(service, principal.tenant, personal,
                                                 request.query_params.get("product"))
        return _csv(columns, rows, what) if fmt == "csv" else _parquet(columns, rows, what)

    page = resources.files("usagehub") / "static" / "analytics.html"

    async def html(_: Request) -> Response:
        return HTMLResponse(page.read_text(encoding="utf-8"))

    return [Route("/analytics", html), Route("/analytics/api/fleet", guarded(fleet)),
            Route("/analytics/api/profile", guarded(profile)),
            Route("/analytics/export/{what:str}.{fmt:str}", guarded(_checked(export)))]


def _checked(handler: Callable[..., Any]) -> Callable[..., Any]:
    async def inner(request: Request, principal: Principal, personal: bool) -> Response:
        if request.path_params["what"] not in ("features", "series") or \
                request.path_params["fmt"] not in ("csv", "parquet"):
            raise _Refused(404, "exports: /analytics/export/{features,series}.{csv,parquet}")
        result: Response = await handler(request, principal, personal)
        return result
    return inner


async def _feature_table(service: AnalyticsService, tenant: str, personal: bool,
                         product: str | None) -> tuple[list[str], list[list[Any]]]:
    async with service.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT pf.account_id, pf.product, pf.as_of, pf.days, pf.avg_daily, pf.peak_daily, pf.volatility, "
            "pf.mom_trend, pf.weekend_ratio, pf.weekend_share, pf.night_share, pf.morning_share, "
            "pf.afternoon_share, pf.evening_share, af.topups, af.topup_typical, af.days_near_zero, af.activity, "
            "a.market FROM product_features pf JOIN accounts a ON a.account_id = pf.account_id "
            "LEFT JOIN account_features af ON af.account_id = pf.account_id "
            "WHERE a.tenant = %s AND (%s::text IS NULL OR pf.product = %s) ORDER BY pf.account_id, pf.product",
            (tenant, product, product))
        columns = [c.name for c in cur.description or []]
        rows = [list(r) for r in await cur.fetchall()]
    for row in rows:
        row[0] = await service.show(str(row[0]), personal)
    return columns, rows


def _csv(columns: list[str], rows: list[list[Any]], name: str) -> Response:
    buffer = io.StringIO()
    writer = SafeWriter(buffer)  # ids and markets never run as spreadsheet formulas
    writer.writerow(columns)
    writer.writerows(rows)
    return Response(buffer.getvalue(), media_type="text/csv",
                    headers={"content-disposition": f'attachment; filename="{name}.csv"'})


def _parquet(columns: list[str], rows: list[list[Any]], name: str) -> Response:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = []
    for i, _ in enumerate(columns):
        values = [r[i] for r in rows]
        sample = next((v for v in values if v is not None), None)
        if isinstance(sample, Decimal):  # exact decimals, never floats
            arrays.append(pa.array([None if v is None else v.quantize(_SCALE) for v in values],
                                   type=pa.decimal128(38, 9)))
        else:
            arrays.append(pa.array(values))
    sink = io.BytesIO()
    pq.write_table(pa.table(arrays, names=columns), sink)
    return Response(sink.getvalue(), media_type="application/vnd.apache.parquet",
                    headers={"content-disposition": f'attachment; filename="{name}.parquet"'})
