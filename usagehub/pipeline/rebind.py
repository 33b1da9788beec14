"""Recomputations outside the ingest path: a binding registered after the data, and idle sessions expiring.

A binding change at instant T re-allocates the device's stored pieces that end
after T (usage) or lie at/after T (gauge/state): each usage piece's entry is
re-split under the new bindings and the re-split pieces after T replace the old
ones. Pieces that end at or before T are unchanged because bindings before T are,
and ``split_interval`` gives every part but the last a share that depends on its
own span only. The result is what binding first and sending the data after would
have stored, to the last digit. Sessions and billing records of every account that
lost or gained a piece are then recomputed (billed records get adjustments).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from usagehub.core.allocation import MeterInfo, Point, PointKind, allocate_entry
from usagehub.core.binding import BindingIndex
from usagehub.core.counters import EntryKind, UsageEntry
from usagehub.pipeline.sessions import SessionEngine
from usagehub.storage.pool import Connection
from usagehub.storage.sessions import (
    REF_SEP,
    Origin,
    copy_points,
    lock_accounts,
    lock_devices,
    point_of,
    utc,
    zones_of,
)

_UTC = ZoneInfo("UTC")


def _entry_of(point: Point, origin: Origin) -> UsageEntry:
    ref, since, ts, quantity, _unit = origin
    kind, meter, cause = ref.split(REF_SEP, 2)
    return UsageEntry(device_id=point.device_id, meter=meter, ts=ts, quantity=quantity, cause=cause,
                      kind=EntryKind(kind), since=since, label=point.label)


def moved_by(point: Point, at: datetime) -> bool:
    """Whether a binding change at ``at`` can change this stored piece (its account or its cuts)."""
    if point.start == point.end:
        return point.start >= at
    return point.end > at


def reallocate(rows: Sequence[tuple[Point, Origin | None]], at: datetime, bindings: BindingIndex,
               zone_of: Any) -> list[tuple[Point, Origin | None]]:
    """The pieces that replace ``rows`` (the device's pieces :func:`moved_by` a change at ``at``).

    An entry's moved pieces are the tail of its split from their earliest start on;
    its re-split under the new bindings replaces exactly that tail.
    """
    out: list[tuple[Point, Origin | None]] = []
    tails: dict[Origin, tuple[Point, datetime]] = {}
    for point, origin in rows:
        if point.kind is not PointKind.USAGE or origin is None:
            account = bindings.account_at(point.device_id, point.start)
            out.append((msgspec.structs.replace(point, account_id=account), origin))
        elif origin not in tails or point.start < tails[origin][1]:
            tails[origin] = (point, point.start)
    for origin, (point, tail_start) in tails.items():
        info = MeterInfo(service=point.service, product=point.product, aggregation=point.aggregation,
                         unit=origin[4])
        pieces = allocate_entry(_entry_of(point, origin), info, bindings, zone_of)
        out.extend((p, origin) for p in pieces if p.start >= tail_start)
    return out


async def rebind(engine: SessionEngine, conn: Connection, device_id: str, at: datetime) -> None:
    """Re-allocate ``device_id``'s usage from ``at`` after its bindings changed (in the binding's transaction)."""
    await lock_devices(conn, [device_id])
    cur = await conn.execute(
        "SELECT point_id, account_id, service, device_id, product, kind, aggregation, start_ts, end_ts, value, "
        "active, label, tie, entry_ref, entry_since, coalesce(entry_ts, end_ts), coalesce(entry_quantity, value), "
        "entry_unit FROM session_points "
        "WHERE device_id = %s AND (end_ts > %s OR (start_ts = end_ts AND start_ts >= %s))",
        (device_id, at, at))
    found = await cur.fetchall()
    if not found:
        return
    rows: list[tuple[Point, Origin | None]] = []
    for r in found:
        origin: Origin | None = None if r[13] is None else (
            str(r[13]), None if r[14] is None else utc(r[14]), utc(r[15]), Decimal(str(r[16])),
            str(r[17] or ""))
        rows.append((point_of(r[1:13]), origin))
    bindings, zones = await engine.bindings_for(conn, {device_id})
    fresh = reallocate(rows, at, bindings, lambda a: zones.get(a, _UTC) if a else _UTC)
    old = [p for p, _ in rows]
    accounts = {p.account_id for p in old} | {p.account_id for p, _ in fresh}
    await lock_accounts(conn, {a for a in accounts if a})
    zones |= await zones_of(conn, {a for a in accounts if a})
    # session_points_delete keeps the rollups exact on both storages (migration 0014); given the device and
    # ``at`` it finds the points through the device's index (plain storage keeps none on point_id, 0053).
    cur = await conn.execute("SELECT session_points_delete(%s::bigint[], %s, %s)",
                             ([r[0] for r in found], device_id, at))
    deleted = await cur.fetchone()
    if deleted is None or deleted[0] != len(found):  # never re-allocate beside points left in place
        raise RuntimeError(f"rebind of {device_id}: deleted {deleted and deleted[0]} of {len(found)} points")
    await copy_points(conn, fresh)
    # Old owners recompute from where they lost points, new owners from where they gained them.
    await engine.recompute(conn, [*old, *(p for p, _ in fresh)], zones)


async def sweep_expired(engine: SessionEngine, conn: Connection, now: datetime) -> int:
    """Close open sessions whose idle deadline passed without new data; the number of (account, service)s."""
    cur = await conn.execute(
        "SELECT account_id, service, min(resume_ts) FROM sessions WHERE closed_reason IS NULL "
        "AND expires_at < %s GROUP BY account_id, service ORDER BY account_id, service LIMIT 1000", (now,))
    due = await cur.fetchall()
    if not due:
        return 0
    accounts = {str(r[0]) for r in due}
    await lock_accounts(conn, accounts)
    zones = await zones_of(conn, accounts)
    touched = set()
    for account, service, resume_ts in due:
        key = (utc(resume_ts), -1, utc(resume_ts), "", "", "", "")
        touched |= await engine.resessionize(conn, str(account), str(service), key, zones[str(account)], now)
    await engine.book.reconcile(conn, touched, zones)
    return len(due)
