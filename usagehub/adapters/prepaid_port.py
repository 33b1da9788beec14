"""The prepaid port the device-side adapters call, and the request/answer documents devices exchange.

Devices ask before they close their relay: ``authorize`` (units or amount,
optional card and request id), then ``commit`` the used units or ``release``.
Documents are JSON (MQTT) or CBOR (CoAP) maps with string decimals::

    authorize: {"req": "42", "units": "1.5", "product": "energy", "card": "c1"}   (or "amount")
    commit:    {"req": "43", "reservation": "<id>", "used": "1.2"}
    release:   {"req": "44", "reservation": "<id>"}
    answer:    {"req": "42", "ok": true, "reservation": "<id>", "units": "1.5", "amount": "0.45",
                "currency": "EUR", "expires": "2026-11-21T12:05:00+00:00"}
               {"req": "42", "ok": false, "reason": "INSUFFICIENT_BALANCE", "detail": "..."}

Adapters know no storage: the hub passes an object with these methods (the PrepaidService).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from usagehub.core.prepaid import AuthRequest, Decision, Denial, Grant, Reason, Settlement

OPERATIONS = ("authorize", "commit", "release")


@dataclass(frozen=True, slots=True)
class CommitRequest:
    """A device's commit of the used units of its reservation."""

    device_id: str
    reservation_id: str
    used_units: Decimal


@dataclass(frozen=True, slots=True)
class ReleaseRequest:
    """A device's release of its reservation unused."""

    device_id: str
    reservation_id: str


DeviceRequest = AuthRequest | CommitRequest | ReleaseRequest


class PrepaidPort(Protocol):
    """Authorize / commit / release for devices."""

    async def authorize(self, request: AuthRequest) -> Decision:
        """Grant a reservation or deny with a reason."""
        ...

    async def commit(self, reservation_id: str, used_units: Decimal, *, device_id: str | None = None) -> Settlement:
        """Debit the used units, release the rest (idempotent)."""
        ...

    async def release(self, reservation_id: str, *, device_id: str | None = None) -> Settlement:
        """Release unused (idempotent)."""
        ...


class BatchPrepaidPort(PrepaidPort, Protocol):
    """A port that decides many requests together (one transaction), answering once they are durable."""

    async def decide(self, requests: Sequence[DeviceRequest]) -> list[Decision | Settlement]:
        """Each request's decision, in order, after the transaction holding them all committed."""
        ...


class BadRequest(ValueError):
    """A device document that cannot be a prepaid request."""


def _text(doc: dict[Any, Any], key: str, *, required: bool = False) -> str | None:
    value = doc.get(key)
    if value is None:
        if required:
            raise BadRequest(f"{key} missing")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRequest(f"{key} must be a string")
    text = str(value)
    if not text or len(text) > 200:
        raise BadRequest(f"{key} must have 1..200 characters")
    return text


def _decimal(doc: dict[Any, Any], key: str) -> Decimal | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadRequest(f"{key} must be a decimal string")
    try:
        number = Decimal(str(value))  # floats arrive from some JSON encoders: through str, not binary
    except InvalidOperation as err:
        raise BadRequest(f"{key} is not a number") from err
    if not number.is_finite() or abs(number) > Decimal("1e12"):
        raise BadRequest(f"{key} is out of range")
    return number


def request_id(doc: object) -> str | int | None:
    """The ``req`` a document carries, echoed in its answer (None if absent or not a string/number)."""
    req = doc.get("req") if isinstance(doc, dict) else None
    return req if isinstance(req, str | int) and not isinstance(req, bool) else None


def parse(operation: str, device_id: str, doc: object) -> DeviceRequest:
    """The request a device document makes; BadRequest (with the reason) when it makes none."""
    if not isinstance(doc, dict):
        raise BadRequest("the request must be a map")
    if operation == "authorize":
        return AuthRequest(device_id=device_id, card_id=_text(doc, "card"), units=_decimal(doc, "units"),
                           amount=_decimal(doc, "amount"), product=_text(doc, "product") or "energy",
                           request_id=_text(doc, "req"))
    if operation not in OPERATIONS:
        raise BadRequest(f"unknown operation {operation!r}")
    reservation = _text(doc, "reservation", required=True)
    assert reservation is not None
    if operation == "release":
        return ReleaseRequest(device_id, reservation)
    used = _decimal(doc, "used")
    if used is None:
        raise BadRequest("used missing")
    return CommitRequest(device_id, reservation, used)


def refusal_doc(req: str | int | None, err: BadRequest) -> dict[str, Any]:
    """The answer to a document that is no request."""
    return {"req": req, "ok": False, "reason": Reason.BAD_REQUEST.value, "detail": str(err)}


def answer_doc(req: str | int | None, result: Decision | Settlement) -> dict[str, Any]:
    """The answer to a decided request."""
    return {"req": req} | (settlement_doc(result) if isinstance(result, Settlement) else decision_doc(result))


async def handle(port: PrepaidPort, operation: str, device_id: str, doc: object) -> dict[str, Any]:
    """Run one device request document and return the answer document (never raises on bad input)."""
    req = request_id(doc)
    try:
        request = parse(operation, device_id, doc)
    except BadRequest as err:
        return refusal_doc(req, err)
    if isinstance(request, AuthRequest):
        return answer_doc(req, await port.authorize(request))
    if isinstance(request, CommitRequest):
        return answer_doc(req, await port.commit(request.reservation_id, request.used_units, device_id=device_id))
    return answer_doc(req, await port.release(request.reservation_id, device_id=device_id))


def decision_doc(decision: Decision) -> dict[str, Any]:
    """A grant or denial as a device document."""
    if isinstance(decision, Grant):
        return {"ok": True, "reservation": decision.reservation_id, "units": str(decision.units),
                "amount": str(decision.amount), "currency": decision.currency,
                "expires": decision.expires_at.isoformat()}
    assert isinstance(decision, Denial)
    return {"ok": False, "reason": decision.reason.value, "detail": decision.detail}


def settlement_doc(s: Settlement) -> dict[str, Any]:
    """A settlement as a device document."""
    if s.reason is not None:
        return {"ok": False, "reason": s.reason.value, "reservation": s.reservation_id}
    return {"ok": True, "reservation": s.reservation_id, "state": s.state.value if s.state else None,
            "used": str(s.used_units), "charged": str(s.charged), "released": str(s.released),
            "currency": s.currency}
