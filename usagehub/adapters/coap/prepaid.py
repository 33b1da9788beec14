"""Prepaid over CoAP: ``POST /prepaid/{device_id}/{authorize|commit|release}`` with a CBOR (or JSON) map.

The answer (``usagehub.adapters.prepaid_port``) comes back as 2.05 Content in the
request's format; a denial is an answer too (``ok: false`` with its reason). The
device must be the one OSCORE authenticated, or — unprotected — a registered
device whose profile allows unauthenticated CoAP.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import aiocoap
import cbor2
import orjson
from aiocoap import resource
from aiocoap.numbers.codes import Code
from aiocoap.pipe import Pipe

from usagehub.adapters.base import DeviceDirectory
from usagehub.adapters.coap.security import authenticated_device
from usagehub.adapters.prepaid_port import OPERATIONS, PrepaidPort, handle
from usagehub.core.profiles import Profile

log = logging.getLogger(__name__)

PREFIX = "prepaid"
_JSON, _CBOR = 50, 60  # CoAP content formats


def _answer(code: Code, doc: dict[str, Any], fmt: int) -> aiocoap.Message:
    payload = orjson.dumps(doc) if fmt == _JSON else cbor2.dumps(doc)
    message = aiocoap.Message(code=code, payload=payload)
    message.opt.content_format = fmt
    return message


class PrepaidResource(resource.Resource):  # type: ignore[misc]
    """Answers device prepaid requests through the prepaid port."""

    def __init__(self, port: PrepaidPort, devices: DeviceDirectory, profiles: Sequence[Profile]) -> None:
        super().__init__()
        self.port, self.devices = port, devices
        self.open_profiles = {p.id for p in profiles if p.allow_unauthenticated}

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        """One request: check the path and the device, decode, answer."""
        fmt = _JSON if request.opt.content_format == _JSON else _CBOR
        path = request.opt.uri_path
        if request.code is not Code.POST:
            return _answer(Code.METHOD_NOT_ALLOWED, {"ok": False, "reason": "BAD_REQUEST"}, fmt)
        if len(path) != 3 or path[2] not in OPERATIONS:
            return _answer(Code.NOT_FOUND, {"ok": False, "reason": "BAD_REQUEST",
                                            "detail": "POST /prepaid/{device}/authorize|commit|release"}, fmt)
        device_id, operation = path[1], path[2]
        refused = await self._refusal(device_id, request.remote)
        if refused is not None:
            return _answer(refused, {"ok": False, "reason": "UNAUTHORIZED"}, fmt)
        try:
            doc: Any = orjson.loads(request.payload) if fmt == _JSON else cbor2.loads(request.payload)
        except Exception:  # hostile bytes: any decoder error is a bad request
            doc = None
        answer = await handle(self.port, operation, device_id, doc)
        return _answer(Code.CONTENT if doc is not None else Code.BAD_REQUEST, answer, fmt)

    async def _refusal(self, device_id: str, remote: object) -> Code | None:
        authenticated = authenticated_device(remote)
        if authenticated is not None:
            return None if authenticated == device_id else Code.FORBIDDEN
        endpoint = await self.devices.endpoint(device_id)
        if endpoint is None or endpoint.profile_id not in self.open_profiles:
            return Code.UNAUTHORIZED
        return None


class PrepaidSite(resource.Resource):  # type: ignore[misc]
    """Routes ``/prepaid/...`` to the prepaid resource and every other path to ingest."""

    def __init__(self, ingest: resource.Resource, prepaid: PrepaidResource) -> None:
        super().__init__()
        self.ingest, self.prepaid = ingest, prepaid

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        """As the routed resource says."""
        return bool(await self._route(request.opt.uri_path).needs_blockwise_assembly(request))

    def _route(self, path: Sequence[str]) -> resource.Resource:
        return self.prepaid if path and path[0] == PREFIX else self.ingest

    async def render_to_pipe(self, pipe: Pipe) -> None:
        """Hand the request to the routed resource."""
        await self._route(pipe.request.opt.uri_path).render_to_pipe(pipe)


def prepaid_site(ingest: resource.Resource, port: PrepaidPort | None, devices: DeviceDirectory,
                 profiles: Sequence[Profile]) -> resource.Resource:
    """The site to serve: ingest alone, or ingest plus prepaid when the hub runs prepaid."""
    if port is None:
        return ingest
    return PrepaidSite(ingest, PrepaidResource(port, devices, profiles))
