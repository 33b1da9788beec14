"""Usage SQL: register state (locked per meter), stored neighbourhoods of late readings, entries by COPY."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


async def stored_neighbourhoods(conn: Connection, batches: Mapping[MeterKey, list[Reading]],
                                latest: Mapping[MeterKey, Reading] | None = None) -> dict[MeterKey, list[Reading]]:
    """For each register with late data in the batch: the stored predecessor, those in between, the successor.

    One round trip for all registers. The batch's own events are already in the table (same transaction)
    and are left out, so ``apply_batch`` sees only what was known before. ``latest`` (each register's
    latest reading before the batch) bounds the range read: nothing stored earlier lies past it, so the
    batch's own readings after it are not read back (with local shuffles they are most of the batch).
    """
    keys = list(batches)
    if not keys:
        return {}
    los = [batches[k][0].key for k in keys]
    his = [batches[k][-1].key for k in keys]
    if latest:
        his = [min(hi, last.key) if (last := latest.get(k)) is not None else hi
               for k, hi in zip(keys, his, strict=True)]
    cur = await conn.execute(
        "SELECT k.i, e.ts, e.value, e.event_id, e.reset_marker "
        "FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::timestamptz[], %s::text[]) "
        "  WITH ORDINALITY AS k(device_id, meter, lo_ts, lo_id, hi_ts, hi_id, i) "
        "CROSS JOIN LATERAL ("
        " (SELECT ts, value, event_id, reset_marker FROM events WHERE device_id = k.device_id "
        "  AND meter = k.meter AND (ts, event_id) < (k.lo_ts, k.lo_id) ORDER BY ts DESC, event_id DESC LIMIT 1) "
        " UNION ALL (SELECT ts, value, event_id, reset_marker FROM events WHERE device_id = k.device_id "
        "  AND meter = k.meter AND (ts, event_id) BETWEEN (k.lo_ts, k.lo_id) AND (k.hi_ts, k.hi_id)) "
        " UNION ALL (SELECT ts, value, event_id, reset_marker FROM events WHERE device_id = k.device_id "
        "  AND meter = k.meter AND (ts, event_id) > (k.hi_ts, k.hi_id) ORDER BY ts, event_id LIMIT 1)) AS e",
        ([k[0] for k in keys], [k[1] for k in keys], [lo[0] for lo in los], [lo[1] for lo in los],
         [hi[0] for hi in his], [hi[1] for hi in his]))
    stored: dict[MeterKey, list[Reading]] = {k: [] for k in keys}
    for r in await cur.fetchall():
        key = keys[int(r[0]) - 1]  # type: ignore[call-overload]
        stored[key].append(Reading(ts=r[1], value=r[2], event_id=r[3], reset_marker=r[4]))  # type: ignore[arg-type]
    out: dict[MeterKey, list[Reading]] = {}
    for key, found in stored.items():
        fresh = {r.key for r in batches[key]}
        out[key] = sorted((r for r in found if r.key not in fresh), key=lambda r: r.key)
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


