"""The operator console at /console (a static page that talks GraphQL with the key the operator enters),
and the alerts export behind the same bearer keys."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from usagehub.operations.service import OperationsService
from usagehub.storage.keys import ApiKeys

EXPORT_ROLES = ("admin", "operator")


def console_routes(service: OperationsService, keys: ApiKeys) -> list[BaseRoute]:
    """``/console`` (public page, no data without a key) and ``/console/export/alerts.csv`` (bearer key)."""
    page = (resources.files("usagehub") / "static" / "console.html").read_text(encoding="utf-8")

    async def console(_: Request) -> Response:
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self'; script-src 'self' "
                                           "'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
                                           "connect-src 'self' ws: wss:", "X-Frame-Options": "DENY",
                                           "Referrer-Policy": "no-referrer"})

    async def alerts_csv(request: Request) -> Response:
        principal = await keys.from_header(request.headers.get("authorization", ""))
        if principal is None:
            return PlainTextResponse("missing or invalid API key", status_code=401)
        if principal.role not in EXPORT_ROLES:
            return PlainTextResponse(f"role {principal.role!r} may not export alerts", status_code=403)
        body = await service.alerts_csv(tenant=principal.tenant)
        return Response(body, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="alerts.csv"'})

    return [Route("/console", console), Route("/console/export/alerts.csv", alerts_csv)]
