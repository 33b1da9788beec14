"""Derive append-only usage entries from a batch's new events, in the batch's transaction."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from usagehub.core.counters import CounterSpec, Reading, UsageEntry, apply_batch, reading_of, simple_entry
from usagehub.core.counters import wrap_modulus as modulus_of
from usagehub.core.decode import ProfileSet
from usagehub.core.events import MeterKind, UsageEvent
from usagehub.storage.pool import Connection

MeterKey = tuple[str, str]
_ENTRY_COLUMNS = "device_id, meter, ts, quantity, unit, service, entry_kind, cause_event_id, reason, author"
_ENTRY_TYPES = ["text", "text", "timestamptz", "numeric", "text", "text", "text", "text", "text", "text"]


class UsageWriter:
    """Batch hook: registers become deltas (wrap, reset, late readings), deltas and events become entries."""

    def __init__(self, profiles: ProfileSet) -> None:
        self.profiles = profiles
        # The entries of the last batch, for the next hook (sessions) in the same transaction.
        self.last_entries: list[tuple[UsageEntry, UsageEvent]] = []

    def _spec(self, event: UsageEvent) -> CounterSpec:
        meter = self.profiles.by_id[event.profile_id].profile.meters[event.meter]
        return CounterSpec(device_id=event.device_id, meter=event.meter,
                           wrap_modulus=modulus_of(meter.wrap_bits, meter.scale))

    async def apply(self, conn: Connection, events: Sequence[UsageEvent]) -> None:
        """Append the usage entries of ``events`` (already identity-checked as new); see ``last_entries``."""
        entries: list[tuple[UsageEntry, UsageEvent]] = []
        registers: dict[MeterKey, list[UsageEvent]] = defaultdict(list)
        for event in events:
            if event.kind is MeterKind.CUMULATIVE:
                registers[(event.device_id, event.meter)].append(event)
            elif (entry := simple_entry(event)) is not None:
                entries.append((entry, event))
        if registers:
            entries.extend(await self._registers(conn, registers))
        self.last_entries = entries
        await write_entries(conn, entries)

    async def _registers(self, conn: Connection,
                         registers: dict[MeterKey, list[UsageEvent]]) -> list[tuple[UsageEntry, UsageEvent]]:
        keys = sorted(registers)
        # Row locks serialise two hubs (or batches) updating the same meter.
        cur = await conn.execute(
            "SELECT device_id, meter, ts, value, event_id, reset_marker FROM meter_state "
            "WHERE (device_id, meter) IN (SELECT * FROM unnest(%s::text[], %s::text[])) "
            "ORDER BY device_id, meter FOR UPDATE",
            ([k[0] for k in keys], [k[1] for k in keys]))
        state = {(r[0], r[1]): Reading(ts=r[2], value=r[3], event_id=r[4], reset_marker=r[5])  # type: ignore[arg-type]
                 for r in await cur.fetchall()}
        out: list[tuple[UsageEntry, UsageEvent]] = []
        new_state: list[tuple[MeterKey, Reading]] = []
        for key in keys:
            group = sorted(registers[key], key=lambda e: (e.ts, e.event_id))
            readings = [reading_of(e) for e in group]
            latest = state.get(key)
            if latest is None or readings[0].key > latest.key:
                known = [latest] if latest else []
            else:
                known = await _stored_neighbourhood(conn, key, readings)
            entries, _ = apply_batch(known, readings, self._spec(group[0]))
            by_id = {e.event_id: e for e in group}
            out.extend((entry, by_id.get(entry.cause, group[-1])) for entry in entries)
            if latest is None or readings[-1].key > latest.key:
                new_state.append((key, readings[-1]))
        if new_state:
            await conn.execute(
                "INSERT INTO meter_state (device_id, meter, ts, value, reset_marker, event_id) "
                "SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::numeric[], %s::text[], "
                "%s::text[]) ON CONFLICT (device_id, meter) DO UPDATE SET ts = EXCLUDED.ts, "
                "value = EXCLUDED.value, reset_marker = EXCLUDED.reset_marker, event_id = EXCLUDED.event_id",
                tuple(list(col) for col in zip(*[(k[0], k[1], r.ts, r.value, r.reset_marker, r.event_id)
                                                 for k, r in new_state], strict=True)))
        return out


async def _stored_neighbourhood(conn: Connection, key: MeterKey, new: list[Reading]) -> list[Reading]:
    """Stored readings around a batch with late data: predecessor, those in between, successor.

    The batch's own events are already in the table (same transaction) and are
    left out, so ``apply_batch`` sees only what was known before.
    """
    device_id, meter = key
    lo, hi = new[0].key, new[-1].key
    cur = await conn.execute(
        "(SELECT ts, value, event_id, reset_marker FROM events WHERE device_id = %s AND meter = %s "
        " AND (ts, event_id) < (%s, %s) ORDER BY ts DESC, event_id DESC LIMIT 1) "
        "UNION ALL (SELECT ts, value, event_id, reset_marker FROM events WHERE device_id = %s AND meter = %s "
        " AND (ts, event_id) BETWEEN (%s, %s) AND (%s, %s)) "
        "UNION ALL (SELECT ts, value, event_id, reset_marker FROM events WHERE device_id = %s AND meter = %s "
        " AND (ts, event_id) > (%s, %s) ORDER BY ts, event_id LIMIT 1)",
        (device_id, meter, lo[0], lo[1], device_id, meter, lo[0], lo[1], hi[0], hi[1],
         device_id, meter, hi[0], hi[1]))
    fresh = {r.key for r in new}
    stored = [Reading(ts=r[0], value=r[1], event_id=r[2], reset_marker=r[3])  # type: ignore[arg-type]
              for r in await cur.fetchall()]
    return sorted((r for r in stored if r.key not in fresh), key=lambda r: r.key)


async def write_entries(conn: Connection, entries: Sequence[tuple[UsageEntry, UsageEvent]],
                        reason: str | None = None, author: str | None = None) -> None:
    """Append entries with COPY; the event gives unit and service."""
    if not entries:
        return
    async with conn.cursor() as cur, cur.copy(
            f"COPY usage_entries ({_ENTRY_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(_ENTRY_TYPES)
        for entry, event in entries:
            await copy.write_row((entry.device_id, entry.meter, entry.ts, entry.quantity, event.unit,
                                  event.service, entry.kind.value, entry.cause, reason, author))


