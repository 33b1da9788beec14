"""Usage SQL: register state (locked per meter), stored neighbourhoods of late readings, entries by COPY."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from itertools import pairwise

from usagehub.core.counters import Reading, UsageEntry
from usagehub.core.events import UsageEvent
from usagehub.storage.pool import Connection

MeterKey = tuple[str, str]
_ENTRY_COLUMNS = "device_id, meter, ts, quantity, unit, service, entry_kind, cause_event_id, reason, author"
_ENTRY_TYPES = ["text", "text", "timestamptz", "numeric", "text", "text", "text", "text", "text", "text"]


async def lock_meter_state(conn: Connection, keys: Sequence[MeterKey]) -> dict[MeterKey, Reading]:
    """The latest reading of each register, row-locked: two hubs (or batches) on one meter serialise here."""
    cur = await conn.execute(
        "SELECT device_id, meter, ts, value, event_id, reset_marker FROM meter_state "
        "WHERE (device_id, meter) IN (SELECT * FROM unnest(%s::text[], %s::text[])) "
        "ORDER BY device_id, meter FOR UPDATE",
        ([k[0] for k in keys], [k[1] for k in keys]))
    return {(str(r[0]), str(r[1])): Reading(ts=r[2], value=r[3], event_id=r[4], reset_marker=r[5])  # type: ignore[arg-type]
            for r in await cur.fetchall()}


async def save_meter_state(conn: Connection, new_state: Sequence[tuple[MeterKey, Reading]]) -> None:
    """Upsert the latest reading of each register."""
    if not new_state:
        return
    await conn.execute(
        "INSERT INTO meter_state (device_id, meter, ts, value, reset_marker, event_id) "
        "SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::numeric[], %s::text[], "
        "%s::text[]) ON CONFLICT (device_id, meter) DO UPDATE SET ts = EXCLUDED.ts, "
        "value = EXCLUDED.value, reset_marker = EXCLUDED.reset_marker, event_id = EXCLUDED.event_id",
        tuple(list(col) for col in zip(*[(k[0], k[1], r.ts, r.value, r.reset_marker, r.event_id)
                                         for k, r in new_state], strict=True)))


# Open ends of a probe: before and after any reading.
_FIRST = (datetime.min.replace(tzinfo=UTC), "")
_LAST = (datetime.max.replace(tzinfo=UTC), "")

_NEIGHBOURS_SQL = (
    "SELECT k.i, e.ts, e.value, e.event_id, e.reset_marker "
    "FROM unnest(%s::int[], %s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::timestamptz[], %s::text[], "
    "            %s::bool[]) AS k(i, device_id, meter, lo_ts, lo_id, hi_ts, hi_id, down) "
    "CROSS JOIN LATERAL ("
    " (SELECT ts, value, event_id, reset_marker FROM events WHERE k.down AND device_id = k.device_id "
    "  AND meter = k.meter AND (ts, event_id) > (k.lo_ts, k.lo_id) AND (ts, event_id) < (k.hi_ts, k.hi_id) "
    "  ORDER BY ts DESC, event_id DESC LIMIT 1) "
    " UNION ALL (SELECT ts, value, event_id, reset_marker FROM events WHERE NOT k.down AND device_id = k.device_id "
    "  AND meter = k.meter AND (ts, event_id) > (k.lo_ts, k.lo_id) AND (ts, event_id) < (k.hi_ts, k.hi_id) "
    "  ORDER BY ts, event_id LIMIT 1)) AS e")


def _probes(readings: Sequence[Reading], latest: Reading | None) -> list[tuple[tuple[datetime, str],
                                                                               tuple[datetime, str], bool]]:
    """(after, before, downwards) ranges whose nearest stored reading is a neighbour of a late reading.

    Only the batch's readings up to ``latest`` need stored neighbours (later ones follow ``latest``). Between
    two consecutive such readings lie stored readings only (the batch's others are outside), so the nearest
    one on each side of the gap is a neighbour; before the first and after the last, the nearest one too.
    Two index probes per late reading, whatever the length of the history around it.
    """
    late = [r.key for r in readings if latest is None or r.key <= latest.key]
    if not late:
        return []
    out = [(_FIRST, late[0], True)]
    for lo, hi in pairwise(late):
        out += [(lo, hi, False), (lo, hi, True)]
    out.append((late[-1], _LAST, False))
    return out


async def stored_neighbourhoods(conn: Connection, batches: Mapping[MeterKey, list[Reading]],
                                latest: Mapping[MeterKey, Reading] | None = None) -> dict[MeterKey, list[Reading]]:
    """For each register with late data in the batch: the stored predecessor and successor of each late reading.

    ``batches`` holds each register's batch readings sorted by key. One round trip for all registers. The
    batch's own events are already in the table (same transaction) and are never read back. ``latest`` (each
    register's latest reading before the batch) is included: the batch's readings after it follow it. What is
    read is bounded by the late readings, not by how much history lies between them and the latest
    (a reading days late costs what a reading one slot late costs).
    """
    keys = list(batches)
    if not keys:
        return {}
    latest = latest or {}
    cols: tuple[list[object], ...] = ([], [], [], [], [], [], [], [])
    for i, key in enumerate(keys, 1):
        for lo, hi, down in _probes(batches[key], latest.get(key)):
            for col, value in zip(cols, (i, key[0], key[1], lo[0], lo[1], hi[0], hi[1], down), strict=True):
                col.append(value)
    found: dict[MeterKey, dict[tuple[datetime, str], Reading]] = {k: {} for k in keys}
    if cols[0]:
        cur = await conn.execute(_NEIGHBOURS_SQL, cols)
        for r in await cur.fetchall():
            reading = Reading(ts=r[1], value=r[2], event_id=r[3], reset_marker=r[4])  # type: ignore[arg-type]
            found[keys[int(r[0]) - 1]][reading.key] = reading  # type: ignore[call-overload]
    out: dict[MeterKey, list[Reading]] = {}
    for key, near in found.items():
        last = latest.get(key)
        if last is not None:
            near[last.key] = last
        fresh = {r.key for r in batches[key]}  # never a neighbour (the probes skip them): a safety net
        out[key] = sorted((r for k, r in near.items() if k not in fresh), key=lambda r: r.key)
    return out


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


