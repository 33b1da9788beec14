"""The CoAP resource that turns device POST/PUT requests into RawMessages and answers after commit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import aiocoap
from aiocoap import resource
from aiocoap.numbers.codes import Code
from aiocoap.pipe import Pipe

from usagehub.adapters.base import DeviceDirectory, Outcome, Receipt, Sink
from usagehub.adapters.coap.config import CoapConfig
from usagehub.adapters.coap.routing import Route, Router
from usagehub.adapters.coap.security import authenticated_device
from usagehub.adapters.ratelimit import SourceLimiter
from usagehub.core.events import RawMessage
from usagehub.metrics import DOOR_DROPPED

log = logging.getLogger(__name__)

_TEXT = 0  # content-format text/plain;charset=utf-8


def _reply(code: Code, text: str = "", max_age: int | None = None) -> aiocoap.Message:
    message = aiocoap.Message(code=code, payload=text.encode()[:512])
    if text:
        message.opt.content_format = _TEXT
    if max_age is not None:
        message.opt.max_age = max_age
    return message


class Refused(Exception):
    """A request refused before it reaches the pipeline; carries the CoAP answer."""

    def __init__(self, code: Code, text: str) -> None:
        super().__init__(text)
        self.code, self.text = code, text


class IngestResource(resource.Resource):  # type: ignore[misc]
    """Serves every path: routes it to a profile, authorizes the device, submits, answers after commit."""

    def __init__(self, config: CoapConfig, router: Router, devices: DeviceDirectory,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        super().__init__()
        self._config, self._router, self._devices, self._clock = config, router, devices, clock
        self.sink: Sink | None = None
        self._limiter = SourceLimiter(config.unauthenticated_rate_limit)

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        """Large batches arrive block-wise (RFC 7959); aiocoap reassembles them for us."""
        return True

    async def render_to_pipe(self, pipe: Pipe) -> None:
        """Refuse a block-wise body beyond the limit before it is spooled."""
        block1 = pipe.request.opt.block1
        if block1 is not None and block1.start + block1.size > self._config.max_body_bytes:
            pipe.add_response(_reply(Code.REQUEST_ENTITY_TOO_LARGE,
                                     f"body larger than {self._config.max_body_bytes} bytes"), is_last=True)
            return
        await super().render_to_pipe(pipe)

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        """Answer one (reassembled) request."""
        if request.code not in (Code.POST, Code.PUT):
            return _reply(Code.METHOD_NOT_ALLOWED, "POST or PUT readings")
        if len(request.payload) > self._config.max_body_bytes:
            return _reply(Code.REQUEST_ENTITY_TOO_LARGE, f"body over {self._config.max_body_bytes} bytes")
        path = "/".join(request.opt.uri_path)
        route = self._router.match(path)
        if route is None:
            return _reply(Code.NOT_FOUND, "no profile declares this path")
        try:
            device_id, how = await self._authorize(route, request.remote)
        except Refused as refused:
            return _reply(refused.code, refused.text)
        sink = self.sink
        if sink is None:
            return _reply(Code.SERVICE_UNAVAILABLE, "starting", max_age=5)
        meta = {"profile": route.profile.id, "device_id": device_id, "auth": how}
        if request.opt.content_format is not None:
            meta["content_format"] = str(int(request.opt.content_format))
        message = RawMessage(transport="coap", topic=path, payload=request.payload,
                             received_at=self._clock(), source=_source(request.remote), meta=meta)
        return await self._commit(sink, message)

    async def _commit(self, sink: Sink, message: RawMessage) -> aiocoap.Message:
        future: asyncio.Future[Receipt] | None = None
        try:
            async with asyncio.timeout(self._config.commit_timeout_s):
                future = await sink.submit(message)
                receipt = await future
        except TimeoutError:
            return _reply(Code.SERVICE_UNAVAILABLE, "commit timed out; retry", max_age=5)
        except asyncio.CancelledError:
            if future is None or not future.cancelled() or _being_cancelled():
                raise
            return _reply(Code.SERVICE_UNAVAILABLE, "hub is stopping; retry", max_age=5)
        except Exception as err:  # the device must get an answer; it will retry
            log.debug("submit failed: %r", err)
            return _reply(Code.SERVICE_UNAVAILABLE, "hub cannot store now; retry", max_age=5)
        if receipt.outcome is Outcome.QUARANTINED:
            return _reply(Code.BAD_REQUEST, f"quarantined: {receipt.reason or 'undecodable'}")
        return _reply(Code.CHANGED)

    async def _authorize(self, route: Route, remote: object) -> tuple[str, str]:
        """The device id this request may report for, and how it was authenticated."""
        authenticated = authenticated_device(remote)
        if authenticated is not None:
            if route.path_device_id not in (None, authenticated):
                raise Refused(Code.FORBIDDEN, "path names another device")
            endpoint = await self._devices.endpoint(authenticated)
            if endpoint is None:
                raise Refused(Code.UNAUTHORIZED, "device no longer registered")
            if endpoint.profile_id != route.profile.id:  # the registered profile decides
                raise Refused(Code.FORBIDDEN, "device is not registered for this profile")
            return authenticated, "oscore"
        if not route.profile.allow_unauthenticated:
            raise Refused(Code.UNAUTHORIZED, "OSCORE required")
        if not self._limiter.allow(_host(remote)):  # no credential: bound what one address can send
            DOOR_DROPPED.labels("coap", "rate limited").inc()
            raise Refused(Code.TOO_MANY_REQUESTS, "too many requests from this address")
        if route.path_device_id is None:
            raise Refused(Code.UNAUTHORIZED, "unauthenticated requests must name the device in the path")
        endpoint = await self._devices.endpoint(route.path_device_id)
        if endpoint is None:
            if not self._config.accept_unregistered:
                raise Refused(Code.UNAUTHORIZED, "unknown device")
        elif endpoint.profile_id != route.profile.id:  # no profile is no consent to an open door
            raise Refused(Code.FORBIDDEN, "device is not registered for this profile")
        return route.path_device_id, "none"


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _host(remote: object) -> str:
    """The sender's address without port (one rate-limit bucket per host)."""
    source = _source(remote)
    return source.rsplit(":", 1)[0] if source.count(":") == 1 or source.startswith("[") else source


def _source(remote: object) -> str:
    try:
        return str(getattr(remote, "hostinfo", ""))[:100]
    except Exception:  # some remotes cannot render a host
        return ""
