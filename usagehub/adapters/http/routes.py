"""``POST /ingest``: authenticated batches of readings, answered 202 only after commit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from usagehub.adapters.base import DeviceDirectory, DeviceEndpoint, Outcome, Receipt, Sink
from usagehub.adapters.http.auth import TokenIndex
from usagehub.adapters.http.body import split_body
from usagehub.adapters.http.config import HttpConfig
from usagehub.core.events import RawMessage
from usagehub.core.profiles import Profile

log = logging.getLogger(__name__)

DEFAULT_TOPIC = "ingest"


class _TooLarge(Exception):
    pass


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


class IngestEndpoint:
    """The request handler; one instance per mounted route."""

    def __init__(self, sink: Sink, devices: DeviceDirectory, config: HttpConfig,
                 profiles: Sequence[Profile] = (),
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.sink, self.config, self.clock = sink, config, clock
        self.tokens = TokenIndex(devices, secret=config.token_secret, cache_s=config.token_cache_s,
                                 miss_refresh_s=config.token_miss_refresh_s)
        self.profiles = {p.id: p for p in profiles}

    async def handle(self, request: Request) -> Response:
        """Authenticate, read within limits, submit each line, answer after every commit."""
        endpoint = await self._authenticate(request)
        if endpoint is None:
            return _json(401, {"error": "a valid bearer token is required"},
                         {"WWW-Authenticate": 'Bearer realm="usagehub"'})
        try:
            body = await self._read(request)
        except _TooLarge:
            return _json(413, {"error": f"body larger than {self.config.max_body_bytes} bytes"})
        lines = split_body(body, request.headers.get("content-type", ""))
        if not lines:
            return _json(400, {"error": "empty body: send a JSON array or NDJSON lines"})
        if len(lines) > self.config.max_lines:
            return _json(413, {"error": f"more than {self.config.max_lines} lines"})
        source = request.client.host if request.client else ""
        messages = self._messages(endpoint, lines, source)
        try:
            receipts = await self._commit(messages)
        except (TimeoutError, asyncio.CancelledError, Exception) as err:
            if isinstance(err, asyncio.CancelledError) and _being_cancelled():
                raise
            log.debug("ingest commit failed: %r", err)
            return _json(503, {"error": "not stored; retry the same body (it is idempotent)"},
                         {"Retry-After": "5"})
        return _json(202, _summary(receipts))

    async def _authenticate(self, request: Request) -> DeviceEndpoint | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return await self.tokens.lookup(token.strip())

    async def _read(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.config.max_body_bytes:
            raise _TooLarge
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.config.max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    def _messages(self, endpoint: DeviceEndpoint, lines: list[bytes], source: str) -> list[RawMessage]:
        profile = self._profile_of(endpoint)
        topic = DEFAULT_TOPIC
        meta_base = {"device_id": endpoint.device_id}
        if profile is not None:
            meta_base["profile"] = profile.id
            topic = (profile.match.topic or DEFAULT_TOPIC).replace("{device_id}", endpoint.device_id)
        received_at = self.clock()
        return [RawMessage(transport="http", topic=topic, payload=line, received_at=received_at,
                           source=source, meta={**meta_base, "line": str(n)})
                for n, line in enumerate(lines, start=1)]

    def _profile_of(self, endpoint: DeviceEndpoint) -> Profile | None:
        # Only the registered profile decodes; a device registered without one gets none (and its
        # lines are quarantined by the pipeline), never whatever profile claims /ingest.
        return self.profiles.get(endpoint.profile_id) if endpoint.profile_id is not None else None

    async def _commit(self, messages: list[RawMessage]) -> list[Receipt]:
        async with asyncio.timeout(self.config.commit_timeout_s):
            futures = [await self.sink.submit(m) for m in messages]
            return list(await asyncio.gather(*futures))


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _summary(receipts: list[Receipt]) -> dict[str, object]:
    errors = [{"line": n, "reason": r.reason, "quarantine_id": r.quarantine_id}
              for n, r in enumerate(receipts, start=1) if r.outcome is Outcome.QUARANTINED]
    return {"lines": len(receipts), "accepted": sum(r.accepted for r in receipts),
            "duplicates": sum(r.duplicates for r in receipts), "quarantined": len(errors), "errors": errors}


def ingest_routes(sink: Sink, devices: DeviceDirectory, config: HttpConfig | None = None,
                  profiles: Sequence[Profile] = ()) -> list[Route]:
    """Starlette routes of the ingest endpoint, to mount in the hub's ASGI app."""
    config = config or HttpConfig()
    return [Route(config.path, IngestEndpoint(sink, devices, config, profiles).handle, methods=["POST"])]
