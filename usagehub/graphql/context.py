"""Per-request context: the principal and the services resolvers call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from usagehub.billing.service import BillingService
from usagehub.storage.keys import Principal
from usagehub.storage.queries import Reads
from usagehub.storage.registry import Registry


@dataclass(slots=True)
class Services:
    """What the API needs from the hub, created once at start."""

    registry: Registry
    reads: Reads
    ingest_totals: dict[str, int]
    replay: Callable[[list[int]], Awaitable[list[Any]]]
    extra: dict[str, Any]
    billing: BillingService | None = None
    # One service per room, typed in the room's own GraphQL module (rating, prepaid, analytics).
    rating: Any = None
    prepaid: Any = None
    analytics: Any = None


@dataclass(slots=True)
class Context:
    """The strawberry context of one request."""

    services: Services
    principal: Principal
    request: Any = None
    response: Any = None
