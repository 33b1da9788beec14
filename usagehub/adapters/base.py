"""The adapter contract: how a transport hands raw messages to the hub.

An adapter is an async context manager with ``run(sink)``. It moves bytes and
metadata into :class:`~usagehub.core.events.RawMessage` and nothing more: no SQL,
no accounts, no prices. It acknowledges its sender (MQTT PUBACK, CoAP response,
HTTP 2xx) only when the future returned by :meth:`Sink.submit` has resolved,
which happens after the message's durable commit.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

from pydantic import BaseModel

from usagehub.core.events import RawMessage
from usagehub.core.profiles import Profile
from usagehub.core.records import Record

if TYPE_CHECKING:
    from usagehub.adapters.prepaid_port import PrepaidPort
    from usagehub.core.codecs.keyring import KeyRing


class Outcome(StrEnum):
    """What became of a submitted message."""

    ACCEPTED = "accepted"        # at least one new event stored
    DUPLICATE = "duplicate"      # every event it carried was stored before
    QUARANTINED = "quarantined"  # stored in quarantine with the reason


class Receipt(Record, frozen=True, kw_only=True):
    """The durable result of one submitted message."""

    outcome: Outcome
    accepted: int = 0
    duplicates: int = 0
    reason: str | None = None
    quarantine_id: int | None = None
    device_id: str | None = None


class Sink(Protocol):
    """Where adapters put messages: the ingest pipeline."""

    async def submit(self, message: RawMessage) -> asyncio.Future[Receipt]:
        """Enqueue ``message`` (waits while the pipeline is full); the future resolves after commit."""
        ...


@runtime_checkable
class OfferSink(Protocol):
    """A sink that can also call back once a message is stored, for adapters that need no receipt."""

    async def offer(self, message: RawMessage, stored: Callable[[], None] | None) -> None:
        """Enqueue ``message``; ``stored`` is called after its commit (never if it did not commit)."""
        ...

    def offer_nowait(self, message: RawMessage, stored: Callable[[], None] | None) -> bool:
        """``offer`` when it need not wait (True); False, with nothing enqueued, when the caller must ``offer``."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceEndpoint:
    """What the registry knows of a device that transports need: address and secrets."""

    device_id: str
    profile_id: str | None
    address: str | None = None
    port: int | None = None
    secrets: Mapping[str, str] = field(default_factory=dict)


class DeviceDirectory(Protocol):
    """Read access to the device registry for adapters (polling targets, credentials)."""

    async def endpoints(self, profile_id: str | None = None) -> Sequence[DeviceEndpoint]:
        """Registered devices, optionally only those of one profile."""
        ...

    async def endpoint(self, device_id: str) -> DeviceEndpoint | None:
        """One device, or None when it is not registered."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class AdapterSettings:
    """What the hub injects into every adapter (as opposed to ``*Config``, which users set)."""

    profiles: Sequence[Profile]
    devices: DeviceDirectory
    data_dir: Path
    prepaid: PrepaidPort | None = None  # device-side prepaid requests (CoAP resource), when the hub runs prepaid
    keyring: KeyRing | None = None  # opened device keys (sealed at rest), for adapters that cipher (dlms)


class Adapter(Protocol):
    """A running transport. ``__aexit__`` must be safe when ``__aenter__`` failed."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None: ...

    async def run(self, sink: Sink) -> None:
        """Receive until cancelled, submitting every message to ``sink``."""
        ...


class AdapterFactory(Protocol):
    """Creates one kind of adapter; registered by ``type`` name."""

    type: str
    config_model: builtins.type[BaseModel]

    def create(self, config: BaseModel, settings: AdapterSettings) -> Adapter:
        """A new adapter for validated ``config``."""
        ...
