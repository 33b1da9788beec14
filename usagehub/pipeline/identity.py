"""Who may write usage for which device: the entitlement check of the decode step.

A message speaks for a *sender*: the device whose credential the adapter
verified (``meta["device_id"]``: HTTP bearer token, CoAP OSCORE, SNMP
community/USM), or, on MQTT and Sparkplug, the ``{device_id}``/``{gateway_id}`` segment
of the topic, which the broker's ACL ties to the client's username (``pattern write
meters/%u/reading``, see docs/security.md). A topic naming both a ``{gateway_id}`` and a
``{device_id}`` (a Sparkplug edge node and its device) was published by the gateway: the
device speaks, and the gateway must be the device or registered in front of it. Then:

- the sender's **registered profile decides decoding**; topic matching only
  finds candidates, and a sender registered under a profile that is not a
  candidate (or under none) is refused;
- each decoded reading must be for the sender itself, or for a device
  registered behind the sender (``gateway_devices``) in the same tenant;
  such a device is registered under no profile or under the decoding one;
- doors without a sender (binary TCP/UDP frames, imported files) name the
  device in the payload: it must be registered under the decoding profile
  (files, which only an operator can import, also accept devices with no profile).

A refused message is quarantined whole, with the reason and the device.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from psycopg_pool import AsyncConnectionPool

from usagehub.core.decode import CompiledProfile, ProfileSet
from usagehub.core.events import RawMessage, UsageEvent
from usagehub.errors import DecodeError
from usagehub.storage.events import QuarantineItem
from usagehub.storage.notify import listen_forever
from usagehub.storage.pool import mapped_errors

# Transports whose topic identity segment is enforced by the broker (ACL pattern on %u).
TOPIC_IDENTITY_TRANSPORTS = frozenset({"mqtt", "sparkplug"})
# Operator-only doors: a device registered with no profile is still accepted.
OPERATOR_TRANSPORTS = frozenset({"file"})
_SENDER_GROUPS = ("device_id", "gateway_id")
REGISTRY_CHANNEL = "usagehub_registry"  # notified at the commit of any change of devices or gateway_devices

UNKNOWN_DEVICE = "unknown device"
NO_PROFILE = "device has no registered profile"
PROFILE_MISMATCH = "device registered under another profile"
NOT_ENTITLED = "credential not entitled to this device"


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What the entitlement check needs of one registered device."""

    tenant: str
    profile_id: str | None
    gateways: frozenset[str]


class Decodable(Protocol):
    """A pipeline item: the message in, events or a quarantine entry out."""

    message: RawMessage
    events: Sequence[UsageEvent]
    quarantine: QuarantineItem | None


class DeviceFactsCache:
    """Registry facts per device: cached until the registry changes (a notification), or ``ttl_s`` while deaf.

    A trigger on ``devices`` and ``gateway_devices`` notifies ``usagehub_registry`` at each change's commit
    (migration 0052); :meth:`listen` drops every entry then, so a changed profile or relation counts at
    once. While no listener is connected (not started, or its connection lost) an entry lives ``ttl_s``, as
    all did before: that costs a lookup for each message of a device that sends less often than ``ttl_s``
    (a meter every 15 minutes: every message). A load that a change overtakes is not kept.
    """

    def __init__(self, pool: AsyncConnectionPool, *, ttl_s: float = 3.0, max_entries: int = 200_000) -> None:
        self.pool, self._ttl, self._max = pool, ttl_s, max_entries
        self._cache: dict[str, tuple[float, DeviceFacts | None]] = {}  # loaded at (monotonic), facts
        self.changes = 0  # registry changes heard (a load that one overtakes is not kept)
        self.listening = asyncio.Event()  # set while the listener is connected

    async def get(self, device_ids: Iterable[str]) -> dict[str, DeviceFacts | None]:
        """Facts of each device id (None when it is not registered)."""
        now = time.monotonic()
        fresh_after = float("-inf") if self.listening.is_set() else now - self._ttl
        out: dict[str, DeviceFacts | None] = {}
        ask = []
        cache = self._cache
        for d in set(device_ids):
            hit = cache.get(d)
            if hit is not None and hit[0] > fresh_after:
                out[d] = hit[1]
            else:
                ask.append(d)
        if ask:
            changes = self.changes
            found = await self._load(ask)
            for d in ask:
                out[d] = found.get(d)
            if changes != self.changes:  # a change was heard meanwhile: this load may predate it
                return out
            cache = self._cache
            if len(cache) + len(ask) > self._max:  # a flood of invented ids must not grow memory
                self._cache = cache = {k: v for k, v in cache.items() if v[0] > fresh_after}
                if len(cache) + len(ask) > self._max:
                    cache.clear()
            for d in ask:
                cache[d] = (now, out[d])
        return out

    def changed(self, _payload: str = "") -> None:
        """The registry changed: every entry is gone (loads in flight are not kept)."""
        self.changes += 1
        self._cache.clear()

    async def listen(self, retry_s: float = 1.0) -> None:
        """Hear registry changes until cancelled, reconnecting; entries live ``ttl_s`` while not connected."""
        try:
            await listen_forever(str(self.pool.conninfo), REGISTRY_CHANNEL, self.changed,
                                 on_connect=self._connected, on_lost=self.listening.clear, retry_s=retry_s)
        finally:
            self.listening.clear()

    def _connected(self) -> None:
        self.changed()  # what changed while no one listened
        self.listening.set()

    async def _load(self, device_ids: list[str]) -> dict[str, DeviceFacts]:
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT d.device_id, d.tenant, d.profile_id, "
                "coalesce(array_agg(g.gateway_id) FILTER (WHERE g.gateway_id IS NOT NULL), '{}') "
                "FROM devices d LEFT JOIN gateway_devices g ON g.device_id = d.device_id "
                "WHERE d.device_id = ANY(%s) GROUP BY d.device_id", (device_ids,))
            rows = await cur.fetchall()
        return {str(r[0]): DeviceFacts(tenant=str(r[1]), profile_id=r[2], gateways=frozenset(r[3]))
                for r in rows}


class Entitlements:
    """Decodes a batch by registered profile and refuses readings the sender may not write."""

    def __init__(self, pool: AsyncConnectionPool, profiles: ProfileSet, *, ttl_s: float = 3.0) -> None:
        self.profiles = profiles
        self.facts = DeviceFactsCache(pool, ttl_s=ttl_s)
        self._candidates = lru_cache(maxsize=65536)(self._candidates_uncached)
        self._topic_facts = lru_cache(maxsize=65536)(self._topic_facts_uncached)

    def _candidates_uncached(self, version: int, transport: str, topic: str
                             ) -> tuple[tuple[CompiledProfile, dict[str, str]], ...]:
        """``version`` keys the cache: meter types can change while the hub runs (``ProfileSet.replace``)."""
        found: list[tuple[CompiledProfile, dict[str, str]]] = []
        for compiled in self.profiles.compiled:
            if compiled.profile.match.transport != transport:
                continue
            if compiled.topic_re is None:
                found.append((compiled, {}))
            elif m := compiled.topic_re.match(topic):
                found.append((compiled, m.groupdict()))
        return tuple(found)

    def lane_key(self, message: RawMessage) -> str:
        """What a commit lane is chosen by: the authenticated sender (device or gateway), or the device its
        topic names, or the topic (a gateway's: its messages keep their order in one lane)."""
        if "device_id" in message.meta:
            return message.meta["device_id"]
        return self._topic_facts(self.profiles.version, message.transport, message.topic)[1] or message.topic

    def _topic_facts_uncached(self, version: int, transport: str, topic: str) -> tuple[bool, str | None]:
        """Whether a candidate profile of the topic names devices in the payload; the device the topic names."""
        found = self._candidates(version, transport, topic)
        return (any(compiled.device_id is not None for compiled, _ in found),
                found[0][1].get("device_id") if found else None)

    def names_devices_in_payload(self, message: RawMessage) -> bool:
        """Whether a profile that may decode ``message`` takes device ids from its payload (a gateway's)."""
        if "profile" in message.meta:  # the adapter chose the profile (HTTP, files)
            compiled = self.profiles.by_id.get(message.meta["profile"])
            return compiled is not None and compiled.device_id is not None
        return self._topic_facts(self.profiles.version, message.transport, message.topic)[0]

    def candidates(self, message: RawMessage) -> list[tuple[CompiledProfile, dict[str, str]]]:
        """The profiles that may decode ``message`` with their topic captures (adapter-chosen profile first)."""
        if "profile" in message.meta:
            compiled = self.profiles.by_id.get(message.meta["profile"])
            if compiled is None:
                raise DecodeError("unknown profile", detail=message.meta["profile"])
            captures = {}
            if compiled.topic_re is not None and (m := compiled.topic_re.match(message.topic)):
                captures = m.groupdict()
            if "device_id" in message.meta:
                captures["device_id"] = message.meta["device_id"]
            return [(compiled, captures)]
        found = list(self._candidates(self.profiles.version, message.transport, message.topic))
        if not found:
            raise DecodeError("unknown topic", detail=f"{message.transport}:{message.topic[:200]}")
        return found

    @staticmethod
    def sender(message: RawMessage, captures: dict[str, str]) -> str | None:
        """The identity the message speaks for, when its door establishes one."""
        if "device_id" in message.meta:
            return message.meta["device_id"]
        if message.transport in TOPIC_IDENTITY_TRANSPORTS:
            for group in _SENDER_GROUPS:
                if captures.get(group):
                    return captures[group]
        return None

    @staticmethod
    def publisher(message: RawMessage, captures: dict[str, str]) -> str | None:
        """The gateway that published for the sender (topic ``{gateway_id}`` beside ``{device_id}``), if any."""
        if "device_id" in message.meta or message.transport not in TOPIC_IDENTITY_TRANSPORTS:
            return None
        gateway, device = captures.get("gateway_id"), captures.get("device_id")
        return gateway if gateway and device and gateway != device else None

    async def decode(self, items: Sequence[Decodable]) -> None:
        """Set each item's events, or its quarantine entry with the reason."""
        plans: list[tuple[Decodable, list[tuple[CompiledProfile, dict[str, str]]], str | None, str | None]] = []
        for item in items:
            try:
                found = self.candidates(item.message)
            except DecodeError as err:
                item.quarantine = QuarantineItem(message=item.message, reason=err.reason, detail=err.detail)
                continue
            captures = found[0][1]
            plans.append((item, found, self.sender(item.message, captures), self.publisher(item.message, captures)))
        senders = await self.facts.get(i for _, _, s, p in plans for i in (s, p) if i is not None)
        decoded: list[tuple[Decodable, str | None, CompiledProfile]] = []
        for item, found, sender, via in plans:
            chosen = self._choose(item, found, sender, senders.get(sender) if sender else None)
            if chosen is not None and via is not None and not self._fronts(via, senders.get(via),
                                                                          senders.get(sender or "")):
                item.quarantine = QuarantineItem(message=item.message, reason=NOT_ENTITLED, detail=sender,
                                                 device_id=sender, profile_id=chosen[0].profile.id)
                chosen = None
            if chosen is None:
                continue
            compiled, captures = chosen
            try:
                item.events = compiled.decode(item.message, captures)
            except RecursionError:
                item.quarantine = QuarantineItem(message=item.message, reason="document too deep")
                continue
            except DecodeError as err:
                item.quarantine = QuarantineItem(message=item.message, reason=err.reason, detail=err.detail,
                                                 device_id=sender, profile_id=compiled.profile.id)
                continue
            decoded.append((item, sender, compiled))
        # Readings for the sender itself were checked before decoding: look up only the other devices.
        named = await self.facts.get({e.device_id for item, sender, _ in decoded for e in item.events
                                      if e.device_id != sender})
        for item, sender, compiled in decoded:
            refusal = self._refusal(item.message, item.events, sender,
                                    senders.get(sender) if sender else None, compiled.profile.id, named)
            if refusal is not None:
                reason, device = refusal
                item.quarantine = QuarantineItem(message=item.message, reason=reason, detail=device,
                                                 device_id=device, profile_id=compiled.profile.id)
                item.events = []

    @staticmethod
    def _fronts(gateway: str, gateway_facts: DeviceFacts | None, device_facts: DeviceFacts | None) -> bool:
        """Whether ``gateway`` is registered in front of the device, in the device's tenant."""
        return (gateway_facts is not None and device_facts is not None and gateway in device_facts.gateways
                and gateway_facts.tenant == device_facts.tenant)

    @staticmethod
    def _choose(item: Decodable, found: list[tuple[CompiledProfile, dict[str, str]]], sender: str | None,
                facts: DeviceFacts | None) -> tuple[CompiledProfile, dict[str, str]] | None:
        """The candidate that decodes the message: the sender's registered profile; None when refused."""
        if sender is None:
            return found[0]  # the device is in the payload: checked against the decoding profile after
        reason: str | None = None
        if facts is None:
            reason = UNKNOWN_DEVICE
        elif facts.profile_id is None:
            reason = NO_PROFILE
        else:
            for compiled, captures in found:
                if compiled.profile.id == facts.profile_id:
                    return compiled, captures
            reason = PROFILE_MISMATCH
        item.quarantine = QuarantineItem(message=item.message, reason=reason, detail=sender, device_id=sender,
                                         profile_id=found[0][0].profile.id)
        return None

    @staticmethod
    def _refusal(message: RawMessage, events: Sequence[UsageEvent], sender: str | None,
                 sender_facts: DeviceFacts | None, profile_id: str,
                 named: dict[str, DeviceFacts | None]) -> tuple[str, str] | None:
        """Why these readings may not be stored (reason, device), or None when they may."""
        for device in dict.fromkeys(e.device_id for e in events):
            facts = named.get(device)
            if sender is not None and device == sender:
                continue  # the sender was checked before decoding
            if facts is None:
                return UNKNOWN_DEVICE, device
            if sender is not None:
                assert sender_facts is not None
                if sender not in facts.gateways or facts.tenant != sender_facts.tenant:
                    return NOT_ENTITLED, device
                if facts.profile_id not in (None, profile_id):
                    return PROFILE_MISMATCH, device
            elif facts.profile_id != profile_id and not (
                    facts.profile_id is None and message.transport in OPERATOR_TRANSPORTS):
                return (PROFILE_MISMATCH if facts.profile_id else NO_PROFILE), device
        return None
