"""Meter values into append-only usage entries: registers (wrap, reset, late readings), deltas, events.

A cumulative register yields one delta per consecutive pair of readings ordered
by ``(ts, event_id)``; the delta is attributed at the later reading's time and
covers ``(earlier.ts, later.ts]``. A late reading that lands between two known
readings never edits anything: it appends a retraction of the old delta and the
two new deltas. Invariant: for every ``(since, ts)`` the entries sum to the
deltas of the sorted, de-duplicated series, whatever the arrival order.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from usagehub.core.events import MeterKind, UsageEvent
from usagehub.core.periods import ensure_aware
from usagehub.core.records import Record
from usagehub.errors import DomainError


class EntryKind(StrEnum):
    """Why an entry exists: measured usage, a retraction of an earlier entry, or a correction."""

    USAGE = "usage"
    RETRACTION = "retraction"
    CORRECTION = "correction"


class Reading(Record, frozen=True, kw_only=True):
    """One reading of a register; ``(ts, event_id)`` is its identity and its sort key."""

    ts: datetime
    value: Decimal
    event_id: str
    reset_marker: str | None = None

    @property
    def key(self) -> tuple[datetime, str]:
        """The total order of readings: device time, then event id."""
        return (self.ts, self.event_id)


class UsageEntry(Record, frozen=True, kw_only=True):
    """Append-only usage of one device meter, covering ``(since, ts]`` or the instant ``ts``."""

    device_id: str
    meter: str
    ts: datetime
    quantity: Decimal
    cause: str                       # event id (or correction id) that produced the entry
    kind: EntryKind = EntryKind.USAGE
    since: datetime | None = None    # None: instantaneous usage at ts
    label: str | None = None         # text of an event (unique counts)


@dataclass(frozen=True, slots=True, kw_only=True)
class CounterSpec:
    """How one register stream of one device meter turns into entries."""

    device_id: str
    meter: str
    wrap_modulus: Decimal | None = None
    reset_from_zero: bool = True     # after a reset the new value is usage since the restart


def wrap_modulus(wrap_bits: int | None, scale: Decimal) -> Decimal | None:
    """The modulus of a register in scaled units: ``2**bits * scale`` (values are already scaled)."""
    return None if wrap_bits is None else Decimal(2 ** wrap_bits) * scale


def register_delta(prev: Reading | None, cur: Reading, *, wrap_modulus: Decimal | None,
                   reset_from_zero: bool = True) -> Decimal:
    """Usage between two consecutive readings of a register.

    - no previous reading: 0 (the first reading is the baseline);
    - reset marker changed: a reset;
    - value rose (or equal): the difference;
    - value dropped by more than half the modulus: a wrap, ``cur + modulus - prev``;
    - any other drop (or no modulus): a reset.
    After a reset the usage is ``cur`` (the counter restarted at 0) when
    ``reset_from_zero``, else 0 (``cur`` is only a new baseline).
    """
    if prev is None:
        return Decimal(0)
    reset = prev.reset_marker != cur.reset_marker
    if not reset and cur.value >= prev.value:
        return cur.value - prev.value
    if not reset and wrap_modulus is not None and (prev.value - cur.value) > wrap_modulus / 2:
        return cur.value + wrap_modulus - prev.value
    return cur.value if reset_from_zero else Decimal(0)


def _entry(spec: CounterSpec, a: Reading | None, b: Reading, cause: str, kind: EntryKind,
           negate: bool = False) -> UsageEntry | None:
    quantity = register_delta(a, b, wrap_modulus=spec.wrap_modulus, reset_from_zero=spec.reset_from_zero)
    if a is None or not quantity:  # Decimal truth, not == 0: no int to convert per reading
        return None  # a baseline or an unchanged register carries no usage
    return UsageEntry(device_id=spec.device_id, meter=spec.meter, ts=b.ts, since=a.ts,
                      quantity=-quantity if negate else quantity, cause=cause, kind=kind)


def amend(prev: Reading | None, nxt: Reading | None, new: Reading, spec: CounterSpec) -> list[UsageEntry]:
    """Entries to append when ``new`` arrives between its neighbours ``prev`` and ``nxt``.

    In order (``nxt`` is None) this is just ``delta(prev, new)``. Otherwise the
    delta ``prev -> nxt`` is retracted (a negative entry at ``nxt.ts``) and
    ``prev -> new`` (at ``new.ts``) and ``new -> nxt`` (at ``nxt.ts``) appended.
    """
    entries: list[UsageEntry | None] = [_entry(spec, prev, new, new.event_id, EntryKind.USAGE)]
    if nxt is not None:
        entries.append(_entry(spec, prev, nxt, new.event_id, EntryKind.RETRACTION, negate=True))
        entries.append(_entry(spec, new, nxt, new.event_id, EntryKind.USAGE))
    return [e for e in entries if e is not None]


def apply_batch(known: Sequence[Reading], new: Iterable[Reading],
                spec: CounterSpec) -> tuple[list[UsageEntry], list[Reading]]:
    """Entries for a batch of ``new`` readings of one register, given ``known`` stored readings.

    ``known`` must be sorted by key and contain, for every new reading, its
    stored predecessor and successor (for in-order batches: the latest reading).
    Returns the entries to append and the readings actually added (duplicates
    of known or earlier batch readings are dropped). In-order batches cost O(n).
    """
    series = list(known)
    keys = [r.key for r in series]
    entries: list[UsageEntry] = []
    added: list[Reading] = []
    usage = EntryKind.USAGE
    for reading in new:
        ensure_aware(reading.ts)
        key = (reading.ts, reading.event_id)
        if not keys or key > keys[-1]:  # the common in-order case: no search, no retraction
            if (entry := _entry(spec, series[-1] if series else None, reading, reading.event_id, usage)) is not None:
                entries.append(entry)
            series.append(reading)
            keys.append(key)
            added.append(reading)
            continue
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            continue  # a duplicate: identity already known
        prev = series[i - 1] if i > 0 else None
        entries.extend(amend(prev, series[i], reading, spec))
        series.insert(i, reading)
        keys.insert(i, key)
        added.append(reading)
    return entries, added


def simple_entry(event: UsageEvent) -> UsageEntry | None:
    """The entry of a delta (its value) or event (1) meter event; None for other kinds."""
    if event.kind is MeterKind.DELTA:
        quantity = event.value
    elif event.kind is MeterKind.EVENT:
        quantity = Decimal(1)
    else:
        return None
    return UsageEntry(device_id=event.device_id, meter=event.meter, ts=ensure_aware(event.ts),
                      quantity=quantity, cause=event.event_id, label=event.text_value)


def reading_of(event: UsageEvent) -> Reading:
    """The register reading carried by a cumulative meter event."""
    return Reading(ts=ensure_aware(event.ts), value=event.value, event_id=event.event_id,
                   reset_marker=event.reset_marker)


@dataclass(frozen=True, slots=True, kw_only=True)
class CorrectionEvent:
    """An operator's correction: a signed quantity added to a meter at ``ts``, with reason and author."""

    correction_id: str
    device_id: str
    meter: str
    ts: datetime
    quantity: Decimal
    reason: str
    author: str

    def __post_init__(self) -> None:
        """A correction without reason or author is refused: it must be explainable."""
        if not self.reason.strip() or not self.author.strip():
            raise DomainError("CORRECTION_UNEXPLAINED", "a correction needs a reason and an author")

    def entry(self) -> UsageEntry:
        """The correction as an append-only entry."""
        return UsageEntry(device_id=self.device_id, meter=self.meter, ts=ensure_aware(self.ts),
                          quantity=self.quantity, cause=self.correction_id, kind=EntryKind.CORRECTION)
