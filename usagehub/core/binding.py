"""Which account holds a device at an instant: bindings are validity ranges ``[from, to)``."""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise

from usagehub.core.periods import ensure_aware
from usagehub.errors import DomainError


@dataclass(frozen=True, slots=True, kw_only=True)
class Binding:
    """Device ``device_id`` belongs to ``account_id`` over ``[valid_from, valid_to)`` (open if None)."""

    device_id: str
    account_id: str
    valid_from: datetime
    valid_to: datetime | None = None

    def __post_init__(self) -> None:
        """Refuse naive times and empty ranges."""
        ensure_aware(self.valid_from)
        if self.valid_to is not None and ensure_aware(self.valid_to) <= self.valid_from:
            raise DomainError("BINDING_EMPTY", f"binding of {self.device_id} ends before it starts")

    def covers(self, ts: datetime) -> bool:
        """Whether ``ts`` lies in ``[valid_from, valid_to)``."""
        return self.valid_from <= ts and (self.valid_to is None or ts < self.valid_to)


class BindingIndex:
    """All bindings, indexed per device; overlapping bindings of one device are refused."""

    def __init__(self, bindings: Iterable[Binding] = ()) -> None:
        """Index ``bindings``; raise DomainError ``BINDING_OVERLAP`` if two overlap."""
        per_device: defaultdict[str, list[Binding]] = defaultdict(list)
        for binding in bindings:
            per_device[binding.device_id].append(binding)
        self._by_device: dict[str, list[Binding]] = {}
        self._starts: dict[str, list[datetime]] = {}
        for device, items in per_device.items():
            items.sort(key=lambda b: b.valid_from)
            for before, after in pairwise(items):
                if before.valid_to is None or before.valid_to > after.valid_from:
                    raise DomainError("BINDING_OVERLAP",
                                      f"device {device} is bound to {before.account_id} and "
                                      f"{after.account_id} at {after.valid_from.isoformat()}")
            self._by_device[device] = items
            self._starts[device] = [b.valid_from for b in items]

    def account_at(self, device_id: str, ts: datetime) -> str | None:
        """The account holding ``device_id`` at ``ts``, or None when it is unbound then."""
        starts = self._starts.get(device_id)
        if not starts:
            return None
        i = bisect_right(starts, ts) - 1
        if i < 0:
            return None
        binding = self._by_device[device_id][i]
        return binding.account_id if binding.covers(ts) else None

    def changes_within(self, device_id: str, since: datetime, until: datetime) -> list[datetime]:
        """Instants strictly inside ``(since, until)`` where the device's account changes."""
        held = self._by_device.get(device_id)
        if not held:  # an unbound device (most of a fleet's readings in some hubs): no set, no sort
            return []
        cuts: set[datetime] = set()
        for binding in held:
            for edge in (binding.valid_from, binding.valid_to):
                if edge is not None and since < edge < until:
                    cuts.add(edge)
        return sorted(cuts)

    def bindings_of(self, device_id: str) -> list[Binding]:
        """The bindings of one device, oldest first."""
        return list(self._by_device.get(device_id, ()))
