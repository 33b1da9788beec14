"""Reset markers for polled counters: a boot epoch from sysUpTime, plus a per-counter epoch.

The session core turns cumulative readings into deltas; a change of a reading's
reset marker tells it to start a new baseline instead of computing a huge or
negative delta. Here, per device:

* the **boot marker** is the device's boot time (response time minus sysUpTime),
  bucketed to ``BOOT_BUCKET_S`` and then *kept* as long as each new sysUpTime is
  where the previous one predicts (so jitter, clock noise and the 497-day
  TimeTicks wrap never change it); a sysUpTime that is not where it should be
  (the agent restarted) gives a new marker;
* the **counter epoch** of each cumulative OID increments when its value drops
  and a wrap of ``wrap_bits`` cannot explain the drop (the implied wrapped delta
  would exceed half the counter range, or the meter has no ``wrap_bits``);
* the **discontinuity time** (e.g. ifCounterDiscontinuityTime), when the profile
  names one, is appended verbatim: its change is a discontinuity by definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TICKS_MODULUS = 2**32          # TimeTicks wrap after ~497 days
BOOT_BUCKET_S = 60
_BASE_TOLERANCE_S = 10.0       # response-time jitter and clock steps
_DRIFT = 0.002                 # agent tick rate vs hub clock, per elapsed second


@dataclass(slots=True)
class BootTracker:
    """Keeps a device's boot marker stable across polls."""

    marker: str | None = None
    last_uptime: int | None = None
    last_at: float | None = None

    def observe(self, at: float, uptime_ticks: int | None) -> str:
        """The boot marker for a response at epoch ``at`` carrying sysUpTime ``uptime_ticks``."""
        if uptime_ticks is None:
            return self.marker or "b?"
        if self.marker is None or not self._same_boot(at, uptime_ticks):
            boot = at - uptime_ticks / 100
            self.marker = f"b{int(boot // BOOT_BUCKET_S) * BOOT_BUCKET_S}"
        self.last_uptime, self.last_at = uptime_ticks, at
        return self.marker

    def _same_boot(self, at: float, uptime: int) -> bool:
        if self.last_uptime is None or self.last_at is None:
            return False
        elapsed = at - self.last_at
        expected = (self.last_uptime + round(elapsed * 100)) % TICKS_MODULUS
        gap = (uptime - expected) % TICKS_MODULUS
        gap = min(gap, TICKS_MODULUS - gap)
        return gap <= 100 * (_BASE_TOLERANCE_S + _DRIFT * abs(elapsed))


def wrap_explains(previous: int, current: int, wrap_bits: int | None) -> bool:
    """Whether ``previous -> current`` (a drop) is a counter wrap rather than a reset."""
    if wrap_bits is None or previous >= 2**wrap_bits:
        return False
    modulus: int = 2**wrap_bits
    return modulus - previous + current < modulus // 2


@dataclass(slots=True)
class CounterTracker:
    """The epoch of one cumulative OID: bumps on a drop that a wrap cannot explain."""

    last: int | None = None
    epoch: int = 0

    def observe(self, value: int, wrap_bits: int | None) -> int:
        """The epoch after seeing ``value``."""
        if self.last is not None and value < self.last and not wrap_explains(self.last, value, wrap_bits):
            self.epoch += 1
        self.last = value
        return self.epoch


@dataclass(slots=True)
class DeviceMarkers:
    """All marker state of one polled device."""

    boot: BootTracker = field(default_factory=BootTracker)
    counters: dict[str, CounterTracker] = field(default_factory=dict)

    def counter_marker(self, key: str, boot: str, value: int, wrap_bits: int | None,
                       discontinuity: int | None = None) -> str:
        """The reset marker of counter ``key`` (an OID, or ``column.index`` for rows)."""
        epoch = self.counters.setdefault(key, CounterTracker()).observe(value, wrap_bits)
        marker = f"{boot}#{epoch}"
        return marker if discontinuity is None else f"{marker}@{discontinuity}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready snapshot (persisted so a hub restart keeps markers stable)."""
        return {"boot": [self.boot.marker, self.boot.last_uptime, self.boot.last_at],
                "counters": {k: [c.last, c.epoch] for k, c in self.counters.items()}}

    @classmethod
    def from_json(cls, data: Any) -> DeviceMarkers:
        """Restore a snapshot; anything malformed starts fresh rather than failing the hub."""
        try:
            marker, uptime, at = data["boot"]
            counters = {str(k): CounterTracker(last=v[0], epoch=int(v[1]))
                        for k, v in data["counters"].items()}
            return cls(boot=BootTracker(marker=marker, last_uptime=uptime, last_at=at), counters=counters)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            return cls()
