"""The hub's ASGI application: /graphql (with GraphiQL), /healthz, /readyz, /metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cross_web import HTTPException
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.types.unset import UNSET, UnsetType

from usagehub import metrics
from usagehub.graphql.context import Context, Services
from usagehub.graphql.cost import Limits
from usagehub.graphql.schema import build_schema
from usagehub.storage.keys import ApiKeys, Principal
from usagehub.web.graphiql import WithGraphiQL, graphiql_routes

NOBODY = Principal(key_id="", role="", tenant="")  # a socket before connection_init: no role, no tenant


@dataclass(slots=True)
class SocketContext(Context):
    """The context of a WebSocket that authenticates in its connection_init payload."""

    connection_params: dict[str, object] | None = None


class AuthenticatedGraphQL(GraphQL[Context, None]):
    """GraphQL that requires ``Authorization: Bearer <api key>`` (the GraphiQL page in web.graphiql is public)."""

    def __init__(self, services: Services, keys: ApiKeys, limits: Limits) -> None:
        super().__init__(build_schema(limits=limits), graphql_ide=None)  # web.graphiql serves the IDE
        self.services, self.keys = services, keys

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        header = request.headers.get("authorization", "")
        principal = await self.keys.from_header(header)
        if principal is None and isinstance(request, WebSocket) and not header:
            # A browser cannot set headers on a WebSocket: the key comes in connection_init (on_ws_connect).
            return SocketContext(services=self.services, principal=NOBODY, request=request, response=response)
        if principal is None:
            raise HTTPException(401, "missing or invalid API key: send Authorization: Bearer <key>")
        return Context(services=self.services, principal=principal, request=request, response=response)

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        """A socket opened without the header logs in with ``{"Authorization": "Bearer <key>"}`` in connection_init."""
        if isinstance(context, SocketContext) and context.principal is NOBODY:
            params = context.connection_params or {}
            value = params.get("Authorization", params.get("authorization", ""))
            principal = await self.keys.from_header(value) if isinstance(value, str) else None
            if principal is None:
                raise ConnectionRejectionError({"message": "missing or invalid API key: send "
                                                "{\"Authorization\": \"Bearer <key>\"} in connection_init"})
            context.principal = principal
        unset: UnsetType = UNSET  # a plain connection_ack
        return unset


class BodyLimit:
    """Answers 413 to an HTTP request whose body exceeds ``max_bytes``, before anything parses it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "0")
        too_long = len(scope.get("query_string", b"")) > self.max_bytes  # GET /graphql?query=…
        if too_long or not declared.isdigit() or int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:  # a chunked body without (or lying about) its length
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)

        async def replay() -> Message:
            nonlocal body
            sent, body = body, b""
            return {"type": "http.request", "body": sent, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"errors": [{"message": f"request body over {self.max_bytes} bytes",
                                             "extensions": {"code": "BODY_TOO_LARGE"}}]}, status_code=413,
                                headers={"Connection": "close"})
        await response(scope, receive, send)


def create_app(services: Services, keys: ApiKeys, *, ready: Callable[[], bool | tuple[bool, dict[str, Any]]],
               max_depth: int = 12, extra_routes: list[BaseRoute] | None = None,
               live: Callable[[], bool] | None = None, limits: Limits | None = None) -> Starlette:
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

    bounds = limits or Limits(max_depth=max_depth)
    graphql = AuthenticatedGraphQL(services, keys, bounds)
    routes: list[BaseRoute] = [
        Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics_endpoint),
        *(extra_routes or []), *graphiql_routes(),
        Route("/graphql", WithGraphiQL(BodyLimit(graphql, bounds.max_body_bytes)), methods=["GET", "POST"]),
        WebSocketRoute("/graphql", graphql),
    ]
    return Starlette(routes=routes)
