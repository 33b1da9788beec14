"""Consumer self-service at /me: a phone-sized page, its JSON feed behind a consumer token, and vendored assets."""

from __future__ import annotations

from decimal import Decimal
from importlib import resources
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from usagehub.operations.consumer import ConsumerService

_ASSETS = {"uPlot.iife.min.js": "text/javascript", "uPlot.min.css": "text/css"}


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


def me_routes(service: ConsumerService) -> list[BaseRoute]:
    """``/me`` (public page), ``/me/api/summary`` (consumer token) and the uPlot assets it draws with."""
    static = resources.files("usagehub") / "static"
    page = (static / "me.html").read_text(encoding="utf-8")
    assets = {name: (static / "vendor" / "uplot" / name).read_bytes() for name in _ASSETS}

    async def me(_: Request) -> Response:
        return HTMLResponse(page, headers={"X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"})

    async def summary(request: Request) -> Response:
        consumer = await service.consumer(request.headers.get("authorization", ""))
        if consumer is None:
            return PlainTextResponse("missing, invalid or revoked consumer token", status_code=401)
        body = orjson.dumps(await service.summary(consumer), default=_default)
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets:
            return PlainTextResponse("not found", status_code=404)
        return Response(assets[name], media_type=_ASSETS[name], headers={"Cache-Control": "max-age=86400"})

    return [Route("/me", me), Route("/me/api/summary", summary),
            Route("/static/vendor/uplot/{name}", asset)]
