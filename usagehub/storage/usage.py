"""Usage SQL: register state (locked per meter), stored neighbourhoods of late readings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from usagehub.core.counters import Reading
from usagehub.storage.events import compact_ids
from usagehub.storage.pool import Connection

MeterKey = tuple[str, str]


async def lock_meter_state(conn: Connection, keys: Sequence[MeterKey]) -> dict[MeterKey, Reading]:
    """The latest reading of each register, row-locked: two hubs (or batches) on one meter serialise here."""
    cur = await conn.execute(
        "SELECT device_id, meter, ts, value, event_id, reset_marker FROM meter_state "
        "WHERE (device_id, meter) IN (SELECT * FROM unnest(%b::text[], %b::text[])) "
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
        "SELECT * FROM unnest(%b::text[], %b::text[], %b::timestamptz[], %b::numeric[], %b::text[], "
        "%b::text[]) ON CONFLICT (device_id, meter) DO UPDATE SET ts = EXCLUDED.ts, "
        "value = EXCLUDED.value, reset_marker = EXCLUDED.reset_marker, event_id = EXCLUDED.event_id",
        tuple(list(col) for col in zip(*[(k[0], k[1], r.ts, r.value, r.reset_marker, r.event_id)
                                         for k, r in new_state], strict=True)))


# The probes are built in SQL from each register's late readings (in key order). The late readings cut the
# register's history into gaps that hold stored readings only: the nearest stored reading at each end of each
# gap is a neighbour (below the first late reading: the nearest one down; above the last: the nearest one up).
# The client sends three values per late reading, not the sixteen of a probe pair: binding those arrays was
# most of the client's cost. Where ids and values may be stored in compact forms (TimescaleDB, migration 0044)
# rows are read through events_rows, which gives the text and numeric back, and the row bounds are repeated as
# bounds on ts alone (they compare the view's id expression, which no index holds), so the time index and chunk
# exclusion bound the scan; plain PostgreSQL reads events with the key's row bounds, as before.
_NEIGHBOURS_SQL = (
    "WITH r AS (SELECT * FROM unnest(%b::int[], %b::text[], %b::text[]) AS r(i, device_id, meter)), "
    "l AS (SELECT u.i, u.ts, u.id, lag(u.ts) OVER w AS p_ts, lag(u.id) OVER w AS p_id, "
    "      lead(u.ts) OVER w IS NULL AS last FROM unnest(%b::int[], %b::timestamptz[], %b::text[]) "
    "      WITH ORDINALITY AS u(i, ts, id, o) WINDOW w AS (PARTITION BY u.i ORDER BY u.o)), "
    "k AS (SELECT i, coalesce(p_ts, '-infinity') AS lo_ts, coalesce(p_id, '') AS lo_id, ts AS hi_ts, id AS hi_id, "
    "      true AS down FROM l "
    "      UNION ALL SELECT i, p_ts, p_id, ts, id, false FROM l WHERE p_ts IS NOT NULL "
    "      UNION ALL SELECT i, ts, id, 'infinity', '', false FROM l WHERE last) "
    "SELECT k.i, e.ts, e.value, e.event_id, e.reset_marker FROM k JOIN r USING (i) "
    "CROSS JOIN (SELECT max(month_end) AS archived_until FROM events_archived) h "
    "CROSS JOIN LATERAL (SELECT * FROM ("
    " (SELECT ts, value, event_id, reset_marker FROM {rows} WHERE k.down AND device_id = r.device_id "
    "  AND meter = r.meter AND (ts, event_id) > (k.lo_ts, k.lo_id) AND (ts, event_id) < (k.hi_ts, k.hi_id) "
    "  {bounds}ORDER BY ts DESC, event_id DESC LIMIT 1) "
    " UNION ALL (SELECT ts, value, event_id, reset_marker FROM {rows} WHERE NOT k.down "
    "  AND device_id = r.device_id AND meter = r.meter "
    "  AND (ts, event_id) > (k.lo_ts, k.lo_id) AND (ts, event_id) < (k.hi_ts, k.hi_id) "
    "  {bounds}ORDER BY ts, event_id LIMIT 1) "
    # Archived months (storage/archive.py): the nearest archived reading in the gap, the nearer of both wins;
    # a gap that starts after the archived months is not looked up there.
    " UNION ALL SELECT * FROM events_archive_nearest(r.device_id, r.meter, k.lo_ts, k.lo_id, k.hi_ts, k.hi_id, "
    "  k.down) WHERE k.lo_ts < h.archived_until) c "
    " ORDER BY CASE WHEN k.down THEN c.ts END DESC, CASE WHEN k.down THEN c.event_id END DESC, c.ts, c.event_id "
    " LIMIT 1) AS e")
_NEIGHBOURS = {False: _NEIGHBOURS_SQL.format(rows="events", bounds=""),
               True: _NEIGHBOURS_SQL.format(rows="events_rows", bounds="AND ts BETWEEN k.lo_ts AND k.hi_ts ")}


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
    regs: tuple[list[int], list[str], list[str]] = ([], [], [])
    late: tuple[list[int], list[datetime], list[str]] = ([], [], [])
    for i, key in enumerate(keys, 1):
        last = latest.get(key)
        # Only the batch's readings up to ``latest`` need stored neighbours (later ones follow ``latest``).
        older = [r for r in batches[key] if last is None or r.key <= last.key]
        if older:
            regs[0].append(i)
            regs[1].append(key[0])
            regs[2].append(key[1])
            late[0].extend([i] * len(older))
            late[1].extend(r.ts for r in older)
            late[2].extend(r.event_id for r in older)
    found: dict[MeterKey, dict[tuple[datetime, str], Reading]] = {k: {} for k in keys}
    if late[0]:
        cur = await conn.execute(_NEIGHBOURS[await compact_ids(conn)], (*regs, *late))
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
