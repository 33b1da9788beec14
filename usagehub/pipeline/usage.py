"""The usage stage: derive usage entries from a batch's new events, in the batch's transaction.

The entries are stored by the next stage as the session points' origins (``pipeline.sessions``; migration
0041): a point carries the entry it came from, so no row per entry is written here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from contextvars import ContextVar
from decimal import Decimal
from operator import attrgetter

from usagehub.core.counters import CounterSpec, Reading, UsageEntry, apply_batch, reading_of, simple_entry
from usagehub.core.counters import wrap_modulus as modulus_of
from usagehub.core.decode import ProfileSet
from usagehub.core.events import MeterKind, UsageEvent
from usagehub.storage.pool import Connection
from usagehub.storage.usage import (
    MeterKey,
    lock_meter_state,
    save_meter_state,
    stored_neighbourhoods,
)

_ORDER = attrgetter("ts", "event_id")  # a register's readings in key order


class UsageWriter:
    """Batch hook: registers become deltas (wrap, reset, late readings), deltas and events become entries.

    It writes the register state (``meter_state``); the entries go on to the sessions stage.
    """

    def __init__(self, profiles: ProfileSet) -> None:
        self.profiles = profiles
        # The entries of the batch, for the next hook (sessions) in the same transaction. A context variable:
        # the pipeline commits batches of several lanes at once, each in its own task.
        self._last: ContextVar[Sequence[tuple[UsageEntry, UsageEvent]]] = ContextVar(
            f"usage-entries-{id(self)}", default=())
        self._moduli: dict[tuple[str, str], tuple[object, Decimal | None]] = {}  # per profile meter

    @property
    def last_entries(self) -> Sequence[tuple[UsageEntry, UsageEvent]]:
        """The entries this task's batch wrote (empty before the first)."""
        return self._last.get()

    def _spec(self, event: UsageEvent) -> CounterSpec:
        compiled = self.profiles.by_id[event.profile_id]
        cached = self._moduli.get((event.profile_id, event.meter))
        if cached is None or cached[0] is not compiled:  # profiles can be replaced while the hub runs
            meter = compiled.profile.meters[event.meter]
            cached = self._moduli[(event.profile_id, event.meter)] = (compiled,
                                                                     modulus_of(meter.wrap_bits, meter.scale))
        return CounterSpec(device_id=event.device_id, meter=event.meter, wrap_modulus=cached[1])

    async def apply(self, conn: Connection, events: Sequence[UsageEvent]) -> None:
        """Derive the usage entries of ``events`` (already identity-checked as new); see ``last_entries``."""
        entries: list[tuple[UsageEntry, UsageEvent]] = []
        registers: dict[MeterKey, list[UsageEvent]] = defaultdict(list)
        for event in events:
            if event.kind is MeterKind.CUMULATIVE:
                registers[(event.device_id, event.meter)].append(event)
            elif (entry := simple_entry(event)) is not None:
                entries.append((entry, event))
        if registers:
            entries.extend(await self._registers(conn, registers))
        self._last.set(entries)  # stored as the session points' origins (migration 0041), not as rows

    async def _registers(self, conn: Connection,
                         registers: dict[MeterKey, list[UsageEvent]]) -> list[tuple[UsageEntry, UsageEvent]]:
        """The entries of each register's new readings (``registers``' lists are sorted in place)."""
        keys = sorted(registers)
        state = await lock_meter_state(conn, keys)
        out: list[tuple[UsageEntry, UsageEvent]] = []
        new_state: list[tuple[MeterKey, Reading]] = []
        # One pass per register (a gateway batch holds a few readings of each of many registers, so the
        # per-register work counts): its events in key order, their readings, and whether the batch reaches
        # back before its latest stored reading, when it needs the stored neighbours (one round trip for all).
        readings_of: dict[MeterKey, list[Reading]] = {}
        late: dict[MeterKey, list[Reading]] = {}
        for key in keys:
            group = registers[key]  # the caller's own lists: sorted in place
            if len(group) > 1:
                group.sort(key=_ORDER)
            readings = readings_of[key] = [reading_of(e) for e in group]
            if (latest := state.get(key)) is not None and readings[0].key <= latest.key:
                late[key] = readings
        neighbours = await stored_neighbourhoods(conn, late, state)
        for key in keys:
            group, readings, latest = registers[key], readings_of[key], state.get(key)
            known = neighbours.get(key, [latest] if latest else [])
            entries, _ = apply_batch(known, readings, self._spec(group[0]))
            if len(group) == 1:  # every entry comes from the one event
                only = group[0]
                out.extend([(entry, only) for entry in entries])
            else:
                by_id = {e.event_id: e for e in group}
                out.extend((entry, by_id.get(entry.cause, group[-1])) for entry in entries)
            if latest is None or readings[-1].key > latest.key:
                new_state.append((key, readings[-1]))
        await save_meter_state(conn, new_state)
        return out
