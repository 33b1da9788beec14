"""One poll of one device over pysnmp (GET of scalars, walks of columns) and its messages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeAlias

from usagehub.adapters.base import DeviceEndpoint
from usagehub.adapters.snmp._pysnmp import (
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    UdpTransportTarget,
    UsmUserData,
    bulk_walk_cmd,
    get_cmd,
    new_engine,
    walk_cmd,
)
from usagehub.adapters.snmp.markers import DeviceMarkers
from usagehub.adapters.snmp.plan import SYS_UPTIME, PollPlan
from usagehub.adapters.snmp.values import JsonValue, to_json, type_name
from usagehub.core.codecs.snmp import encode_payload
from usagehub.core.events import RawMessage

Auth: TypeAlias = "CommunityData | UsmUserData"


class PollFailed(Exception):
    """A poll got no usable answer (timeout, authentication, error status)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class PollResult:
    """What one poll returned: the GET response time, scalar values and walked rows."""

    at: datetime
    scalars: dict[str, Any]
    rows: dict[str, dict[str, Any]]


class SnmpClient:
    """A pysnmp engine shared by all polls, with transport targets cached per device."""

    def __init__(self, *, max_varbinds: int = 32, max_repetitions: int = 25) -> None:
        self.engine = new_engine()
        self._max_varbinds, self._max_repetitions = max_varbinds, max_repetitions
        self._targets: dict[tuple[str, int, float, int], UdpTransportTarget] = {}

    async def target(self, address: str, port: int, timeout_s: float, retries: int) -> UdpTransportTarget:
        """The (cached) transport target of a device; resolving a name happens once."""
        key = (address, port, timeout_s, retries)
        if key not in self._targets:
            self._targets[key] = await UdpTransportTarget.create((address, port), timeout=timeout_s,
                                                                 retries=retries)
        return self._targets[key]

    async def poll(self, auth: Auth, target: UdpTransportTarget, plan: PollPlan) -> PollResult:
        """GET the scalars (sysUpTime first), then walk each column; PollFailed on any error."""
        scalars: dict[str, Any] = {}
        at: datetime | None = None
        for start in range(0, len(plan.scalars), self._max_varbinds):
            chunk = plan.scalars[start:start + self._max_varbinds]
            scalars.update(await self._get(auth, target, chunk))
            at = at or datetime.now(UTC)  # the response carrying sysUpTime stamps the poll
        rows: dict[str, dict[str, Any]] = {}
        for column in plan.columns:
            async for index, value in self._walk(auth, target, column, plan.version):
                rows.setdefault(index, {})[column] = value
        assert at is not None  # plan.scalars always holds sysUpTime
        return PollResult(at=at, scalars=scalars, rows=rows)

    async def _get(self, auth: Auth, target: UdpTransportTarget, oids: Sequence[str]) -> dict[str, Any]:
        error, status, index, varbinds = await get_cmd(
            self.engine, auth, target, ContextData(), *(ObjectType(ObjectIdentity(o)) for o in oids),
            lookupMib=False)
        if error:
            raise PollFailed(str(error))
        if status:
            raise PollFailed(f"{status.prettyPrint()} at varbind {int(index)}")
        return {str(oid): value for oid, value in varbinds}

    async def _walk(self, auth: Auth, target: UdpTransportTarget, column: str, version: str) -> Any:
        prefix = column + "."
        walker = (walk_cmd(self.engine, auth, target, ContextData(), ObjectType(ObjectIdentity(column)),
                           lexicographicMode=False, lookupMib=False) if version == "1" else
                  bulk_walk_cmd(self.engine, auth, target, ContextData(), 0, self._max_repetitions,
                                ObjectType(ObjectIdentity(column)), lexicographicMode=False, lookupMib=False))
        async for error, status, index, varbinds in walker:
            if error:
                raise PollFailed(f"walk {column}: {error}")
            if status:
                raise PollFailed(f"walk {column}: {status.prettyPrint()} at varbind {int(index)}")
            for oid, value in varbinds:
                name = str(oid)
                if name.startswith(prefix):
                    yield name[len(prefix):], value

    def close(self) -> None:
        """Release the engine's sockets."""
        self.engine.close_dispatcher()


def _varbinds(values: dict[str, Any]) -> tuple[dict[str, JsonValue], dict[str, str]]:
    return ({oid: to_json(v) for oid, v in values.items()}, {oid: type_name(v) for oid, v in values.items()})


def _counter_markers(plan: PollPlan, markers: DeviceMarkers, boot: str, values: dict[str, JsonValue],
                     key_suffix: str, discontinuity: int | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for oid, rule in plan.counters.items():
        value = values.get(oid)
        if not isinstance(value, int) or Decimal(value) in rule.missing:
            continue  # absent or "not supported": no reading, so no baseline change either
        out[oid] = markers.counter_marker(oid + key_suffix, boot, value, rule.wrap_bits, discontinuity)
    return out


def build_messages(plan: PollPlan, result: PollResult, endpoint: DeviceEndpoint, markers: DeviceMarkers,
                   source: str) -> list[RawMessage]:
    """The RawMessages of one poll: one for the scalars, one per walked row (device ``<id>/<index>``)."""
    uptime = to_json(result.scalars.get(SYS_UPTIME)) if SYS_UPTIME in result.scalars else None
    uptime_ticks = uptime if isinstance(uptime, int) else None
    boot = markers.boot.observe(result.at.timestamp(), uptime_ticks)
    ts = result.at.isoformat()
    meta = {"profile": plan.profile_id}
    messages: list[RawMessage] = []
    if plan.has_scalar_meters:
        values, types = _varbinds(result.scalars)
        disc = values.get(plan.discontinuity_oid or "") if not plan.discontinuity_is_column else None
        body = {"kind": "poll", "ts": ts, "device_id": endpoint.device_id, "uptime_ticks": uptime_ticks,
                "boot": boot, "varbinds": values, "types": types,
                "markers": _counter_markers(plan, markers, boot, values, "",
                                            disc if isinstance(disc, int) else None)}
        messages.append(RawMessage(transport="snmp", topic="poll", payload=encode_payload(body),
                                   received_at=result.at, source=source,
                                   meta={**meta, "device_id": endpoint.device_id}))
    for index, row in result.rows.items():
        values, types = _varbinds(row)
        disc = values.get(plan.discontinuity_oid or "") if plan.discontinuity_is_column else None
        device_id = f"{endpoint.device_id}/{index}"
        body = {"kind": "poll", "ts": ts, "device_id": device_id, "index": index,
                "uptime_ticks": uptime_ticks, "boot": boot, "varbinds": values, "types": types,
                "markers": _counter_markers(plan, markers, boot, values, "." + index,
                                            disc if isinstance(disc, int) else None)}
        messages.append(RawMessage(transport="snmp", topic=plan.topic, payload=encode_payload(body),
                                   received_at=result.at, source=source,
                                   meta={**meta, "device_id": device_id, "index": index}))
    return messages
