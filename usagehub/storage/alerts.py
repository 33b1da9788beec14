"""Alerts in SQL: raise once per cause, list per tenant, acknowledge; when each device was last heard from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from usagehub.core.alerts import NewAlert
from usagehub.storage.pool import Connection

ALERT_COLUMNS = "alert_id, tenant, kind, severity, account_id, device_id, message, raised_at, acked_at, acked_by"


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertRow:
    """A stored alert."""

    alert_id: int
    tenant: str
    kind: str
    severity: str
    account_id: str | None
    device_id: str | None
    message: str
    raised_at: datetime
    acked_at: datetime | None
    acked_by: str | None


def alert_of(row: Sequence[Any]) -> AlertRow:
    """An :class:`AlertRow` from a row selected with ``ALERT_COLUMNS``."""
    return AlertRow(alert_id=int(row[0]), tenant=str(row[1]), kind=str(row[2]), severity=str(row[3]),
                    account_id=row[4], device_id=row[5], message=str(row[6]), raised_at=row[7], acked_at=row[8],
                    acked_by=row[9])


async def raise_device_alerts(conn: Connection, alerts: Sequence[NewAlert]) -> int:
    """Store device alerts (tenant from the device, account from its binding at the time); return how many are new."""
    if not alerts:
        return 0
    cur = await conn.execute(
        "INSERT INTO alerts (tenant, kind, severity, account_id, device_id, message, raised_at, dedupe_key) "
        "SELECT d.tenant, n.kind, n.severity, b.account_id, n.device_id, n.message, n.raised_at, n.dedupe_key "
        "FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::timestamptz[], %b::text[]) "
        "  AS n(kind, severity, device_id, message, raised_at, dedupe_key) "
        "JOIN devices d ON d.device_id = n.device_id "
        "LEFT JOIN bindings b ON b.device_id = n.device_id AND b.valid @> n.raised_at "
        "ON CONFLICT (dedupe_key) DO NOTHING",
        ([a.kind for a in alerts], [a.severity for a in alerts], [a.device_id for a in alerts],
         [a.message for a in alerts], [a.raised_at for a in alerts], [a.dedupe_key for a in alerts]))
    return cur.rowcount


async def touch_seen(conn: Connection, seen: Sequence[tuple[str, datetime, datetime]]) -> None:
    """Record (device, received at, device time) as the latest contact of each device."""
    if not seen:
        return
    await conn.execute(
        "INSERT INTO device_seen (device_id, last_received, last_ts) "
        "SELECT * FROM unnest(%b::text[], %b::timestamptz[], %b::timestamptz[]) "
        "ON CONFLICT (device_id) DO UPDATE SET last_received = greatest(device_seen.last_received, "
        "EXCLUDED.last_received), last_ts = greatest(device_seen.last_ts, EXCLUDED.last_ts)",
        ([s[0] for s in seen], [s[1] for s in seen], [s[2] for s in seen]))


async def last_seen(conn: Connection, profile_ids: Sequence[str]) -> list[tuple[str, str, datetime]]:
    """(device, profile, last received) of every registered device of these profiles that was ever heard from."""
    cur = await conn.execute(
        "SELECT d.device_id, d.profile_id, s.last_received FROM devices d JOIN device_seen s USING (device_id) "
        "WHERE d.profile_id = ANY(%s)", (list(profile_ids),))
    rows: list[Any] = await cur.fetchall()
    return [(str(r[0]), str(r[1]), r[2]) for r in rows]


async def list_alerts(conn: Connection, *, tenant: str, open_only: bool, kind: str | None, after: int | None,
                      limit: int) -> list[AlertRow]:
    """A tenant's alerts, newest first (keyset on the id)."""
    cur = await conn.execute(
        f"SELECT {ALERT_COLUMNS} FROM alerts WHERE tenant = %s AND (NOT %s OR acked_at IS NULL) "
        "AND (%s::text IS NULL OR kind = %s) AND (%s::bigint IS NULL OR alert_id < %s) "
        "ORDER BY alert_id DESC LIMIT %s", (tenant, open_only, kind, kind, after, after, limit))
    return [alert_of(r) for r in await cur.fetchall()]


async def alert_by_id(conn: Connection, alert_id: int) -> AlertRow | None:
    """One alert, any tenant (the caller checks the tenant)."""
    cur = await conn.execute(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE alert_id = %s", (alert_id,))
    row = await cur.fetchone()
    return None if row is None else alert_of(row)


async def acknowledge(conn: Connection, *, tenant: str, ids: Sequence[int], by: str) -> list[AlertRow]:
    """Acknowledge the tenant's alerts among ``ids`` (an acknowledged alert keeps its first acknowledgement)."""
    cur = await conn.execute(
        "UPDATE alerts SET acked_at = coalesce(acked_at, now()), acked_by = coalesce(acked_by, %s) "
        f"WHERE tenant = %s AND alert_id = ANY(%s) RETURNING {ALERT_COLUMNS}", (by, tenant, list(ids)))
    return sorted((alert_of(r) for r in await cur.fetchall()), key=lambda a: a.alert_id)


async def quarantine_bursts(conn: Connection, *, since: datetime, threshold: int) -> list[tuple[str, int]]:
    """(device, count) of registered devices with at least ``threshold`` quarantined messages since ``since``."""
    cur = await conn.execute(
        "SELECT q.device_id, count(*) FROM quarantine q JOIN devices d USING (device_id) "
        "WHERE q.received_at >= %s GROUP BY q.device_id HAVING count(*) >= %s", (since, threshold))
    rows: list[Any] = await cur.fetchall()
    return [(str(r[0]), int(r[1])) for r in rows]
