"""Invoice and settlement exports over HTTP for billing systems, behind the same API keys as /graphql.

``GET /exports/invoices/{account_id}/{period}.json|.csv`` and
``GET /exports/settlements/{vendor_id}/{period}.json|.csv`` (period ``YYYY-MM``)
answer the core's export documents byte for byte (``usagehub.invoice-preview/2``,
``usagehub.settlement/1``). Admin and billing keys only: 401 without a valid key,
403 for other roles, 404 for an unknown account or vendor, a period never
settled, or another tenant's data, 400 for a malformed period.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from usagehub.errors import DomainError
from usagehub.rating.service import FORMATS, RatingService
from usagehub.storage.keys import ApiKeys, Principal

Fetch = Callable[..., Awaitable[str | None]]  # (id, period, format, tenant=) -> document, None: not settled

EXPORT_ROLES = ("admin", "billing")
_PERIOD = re.compile(r"^\d{4}-\d{2}$")
_NOT_FOUND = {"UNKNOWN_ACCOUNT", "UNKNOWN_VENDOR"}


def _problem(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)


async def _principal(request: Request, keys: ApiKeys) -> Principal | Response:
    principal = await keys.from_header(request.headers.get("authorization", ""))
    if principal is None:
        return _problem(401, "UNAUTHENTICATED", "missing or invalid API key: send Authorization: Bearer <key>")
    if principal.role not in EXPORT_ROLES:
        return _problem(403, "FORBIDDEN", f"role {principal.role!r} may not export (needs admin or billing)")
    return principal


def _target(request: Request) -> tuple[str, str, str] | Response:
    """(id, period, format) from the path, or a 400/404 answer."""
    ident, name = str(request.path_params["ident"]), str(request.path_params["file"])
    period, _, fmt = name.rpartition(".")
    if fmt not in FORMATS:
        return _problem(404, "NOT_FOUND", "exports are .json or .csv")
    if not _PERIOD.match(period):
        return _problem(400, "BAD_PERIOD", f"period must be YYYY-MM, not {period!r}")
    return ident, period, fmt


def _file(body: str, fmt: str, name: str) -> Response:
    return Response(body, media_type=FORMATS[fmt],
                    headers={"Content-Disposition": f'attachment; filename="{name}.{fmt}"'})


def export_routes(rating: RatingService, keys: ApiKeys) -> list[BaseRoute]:
    """The export routes, to pass as ``extra_routes`` to ``web.create_app``."""

    async def serve(request: Request, kind: str, fetch: Fetch) -> Response:
        who = await _principal(request, keys)
        if isinstance(who, Response):
            return who
        target = _target(request)
        if isinstance(target, Response):
            return target
        ident, period, fmt = target
        try:
            body = await fetch(ident, period, fmt, tenant=who.tenant)
        except DomainError as err:
            return _domain(err)
        if body is None:
            return _problem(404, "NOT_SETTLED", f"vendor {ident!r} has no settlement for {period}: "
                            "run runSettlement first")
        return _file(body, fmt, f"{kind}-{ident}-{period}")

    async def invoice(request: Request) -> Response:
        return await serve(request, "invoice", rating.invoice_export)

    async def statement(request: Request) -> Response:
        return await serve(request, "settlement", rating.statement_export)

    return [Route("/exports/invoices/{ident}/{file}", invoice, methods=["GET"]),
            Route("/exports/settlements/{ident}/{file}", statement, methods=["GET"])]


def _domain(err: DomainError) -> Response:
    status = 404 if err.code in _NOT_FOUND else 422
    return _problem(status, err.code, str(err))


__all__ = ["EXPORT_ROLES", "export_routes"]
