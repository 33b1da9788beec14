"""Usage entries and events into account-bound points, split at binding changes and period boundaries.

An entry covering ``(since, ts]`` is cut where the device changes account and,
within each account's stretch, where that account's billing period changes; the
quantity is split proportionally to time (:func:`~usagehub.core.periods.split_interval`).
A part ``(a, b]`` belongs to the account and period of its start ``a``; an
instantaneous entry or event belongs to those of its own instant.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from itertools import pairwise
from zoneinfo import ZoneInfo

import msgspec

from usagehub.core.binding import BindingIndex
from usagehub.core.counters import UsageEntry
from usagehub.core.events import Aggregation, UsageEvent
from usagehub.core.periods import boundaries_within, ensure_aware, split_interval
from usagehub.core.profiles import MeterSpec
from usagehub.core.records import Record

ZoneOf = Callable[[str | None], ZoneInfo]
_UTC = ZoneInfo("UTC")


def utc_zone(_account: str | None) -> ZoneInfo:
    """A zone lookup that bills every account in UTC (tests, defaults)."""
    return _UTC


class PointKind(StrEnum):
    """What a point says: a quantity of usage, an instant value, or a state change."""

    USAGE = "usage"
    GAUGE = "gauge"
    STATE = "state"


class Point(Record, frozen=True, kw_only=True):
    """One account-bound sample of a product, over ``[start, end]`` (an instant when equal)."""

    account_id: str | None
    service: str
    device_id: str
    product: str
    kind: PointKind
    aggregation: Aggregation
    start: datetime
    end: datetime
    value: Decimal
    active: bool | None = None   # state points: activation (True) or deactivation (False)
    label: str | None = None
    tie: str = ""                # event id of gauge/state points; orders equal instants


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterInfo:
    """What allocation needs to know about a device meter (from its profile)."""

    service: str
    product: str
    aggregation: Aggregation
    active_values: tuple[str, ...] = ("true", "1", "on", "active", "armed", "open")
    unit: str = ""  # the meter's unit: a usage point carries it (the usage query and meter view read it)

    @classmethod
    def of(cls, name: str, spec: MeterSpec, service: str) -> MeterInfo:
        """The allocation facts of profile meter ``name``; its product defaults to its name."""
        return cls(service=service, product=spec.product or name, aggregation=spec.aggregation,
                   active_values=tuple(str(v).lower() for v in spec.active_values), unit=spec.unit)


def _segments(entry: UsageEntry, since: datetime, bindings: BindingIndex,
              zone_of: ZoneOf) -> list[datetime]:
    cuts = bindings.changes_within(entry.device_id, since, entry.ts)
    edges = [since, *cuts, entry.ts]
    out: list[datetime] = list(cuts)
    for a, b in pairwise(edges):
        zone = zone_of(bindings.account_at(entry.device_id, a))
        out.extend(boundaries_within(a, b, zone))
    return out


def allocate_entry(entry: UsageEntry, info: MeterInfo, bindings: BindingIndex,
                   zone_of: ZoneOf = utc_zone) -> list[Point]:
    """The usage points of one entry, each bound to its account (None: unbound)."""
    ts = ensure_aware(entry.ts)
    device = entry.device_id
    if entry.since is None:
        pieces = [(ts, ts, entry.quantity)]
    else:
        since = ensure_aware(entry.since)
        account = bindings.account_at(device, since)
        if not bindings.changes_within(device, since, ts) and not boundaries_within(since, ts, zone_of(account)):
            # the common case: one account, one period (split_interval's answer), looked up once
            return [Point(account_id=account, service=info.service, device_id=device, product=info.product,
                          kind=PointKind.USAGE, aggregation=info.aggregation, start=since, end=ts,
                          value=entry.quantity, label=entry.label)]
        cuts = _segments(entry, since, bindings, zone_of)
        pieces = [(p.start, p.end, p.quantity) for p in split_interval(entry.quantity, since, ts, cuts)]
    return [Point(account_id=bindings.account_at(device, a), service=info.service,
                  device_id=device, product=info.product, kind=PointKind.USAGE,
                  aggregation=info.aggregation, start=a, end=b, value=q, label=entry.label)
            for a, b, q in pieces]


def is_active(event: UsageEvent, active_values: Sequence[str]) -> bool:
    """Whether a state event says active: its text or value matches an active value."""
    candidates = {str(event.value.normalize()).lower()}
    if event.text_value is not None:
        candidates.add(event.text_value.strip().lower())
    return bool(candidates & {v.lower() for v in active_values})


def event_point(event: UsageEvent, info: MeterInfo, bindings: BindingIndex, *, state: bool) -> Point:
    """The point of a gauge (``state=False``) or state (``state=True``) event."""
    ts = ensure_aware(event.ts)
    active = is_active(event, info.active_values) if state else None
    value = Decimal(int(bool(active))) if state else event.value
    return Point(account_id=bindings.account_at(event.device_id, ts), service=info.service,
                 device_id=event.device_id, product=info.product,
                 kind=PointKind.STATE if state else PointKind.GAUGE, aggregation=info.aggregation,
                 start=ts, end=ts, value=value, active=active, label=event.text_value, tie=event.event_id)


def net_points(points: Iterable[Point]) -> list[Point]:
    """Usage points of the same device, product and span summed into one (retractions cancel).

    The result depends only on the set of deltas of the true series, never on
    arrival order, which is what makes sessions deterministic.
    """
    first: dict[tuple[object, ...], Point] = {}
    sums: dict[tuple[object, ...], Decimal] = {}  # only spans met more than once (most are met once)
    others: dict[Point, None] = {}   # gauge/state points are events: a duplicate counts once
    usage = PointKind.USAGE
    for point in points:
        if point.kind is not usage:
            others[point] = None
            continue
        key = (point.account_id, point.service, point.device_id, point.product, point.start,
               point.end, point.label, point.aggregation)
        seen = first.get(key)
        if seen is None:
            first[key] = point
        else:  # the same span again (a retraction, a re-add; the same object twice counts twice too)
            sums[key] = sums.get(key, seen.value) + point.value
    if not sums:  # the common case: every span once
        return [*others, *first.values()]
    return [*others, *(p if (total := sums.get(k)) is None or p.value == total
                         else msgspec.structs.replace(p, value=total) for k, p in first.items())]


def by_account(points: Iterable[Point]) -> dict[tuple[str | None, str], list[Point]]:
    """Points grouped by ``(account, service)``; the None account holds unbound usage."""
    groups: defaultdict[tuple[str | None, str], list[Point]] = defaultdict(list)
    for point in points:
        groups[(point.account_id, point.service)].append(point)
    return dict(groups)
