"""The hub's ASGI application: /graphql (with GraphiQL), /healthz, /readyz, /metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cross_web import HTTPException
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL

from usagehub import metrics
from usagehub.graphql.context import Context, Services
from usagehub.graphql.schema import build_schema
from usagehub.storage.keys import ApiKeys


class AuthenticatedGraphQL(GraphQL[Context, None]):
    """GraphQL that requires ``Authorization: Bearer <api key>`` (GraphiQL's page itself is public)."""

    def __init__(self, services: Services, keys: ApiKeys, max_depth: int) -> None:
        super().__init__(build_schema(max_depth), graphql_ide="graphiql")
        self.services, self.keys = services, keys

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        principal = await self.keys.from_header(request.headers.get("authorization", ""))
        if principal is None:
            raise HTTPException(401, "missing or invalid API key: send Authorization: Bearer <key>")
        return Context(services=self.services, principal=principal, request=request, response=response)


def create_app(services: Services, keys: ApiKeys, *, ready: Callable[[], bool | tuple[bool, dict[str, Any]]],
               max_depth: int = 12, extra_routes: list[BaseRoute] | None = None,
               live: Callable[[], bool] | None = None) -> Starlette:
    """The ASGI app of one hub; ``ready`` may return details with the verdict, ``live`` gates /healthz."""

    async def healthz(_: Request) -> Response:
        if live is not None and not live():
            return PlainTextResponse("starting", status_code=503)
        return PlainTextResponse("ok")

    async def readyz(_: Request) -> Response:
        verdict = ready()
        ok, detail = verdict if isinstance(verdict, tuple) else (verdict, {})
        return JSONResponse({"ready": ok, **detail}, status_code=200 if ok else 503)

    async def metrics_endpoint(_: Request) -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    graphql = AuthenticatedGraphQL(services, keys, max_depth)
    routes: list[BaseRoute] = [
        Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics_endpoint),
        *(extra_routes or []),
        Route("/graphql", graphql, methods=["GET", "POST"]), WebSocketRoute("/graphql", graphql),
    ]
    return Starlette(routes=routes)
