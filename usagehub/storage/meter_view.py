"""The meter view's reads (``billing.service.inspect``): each bounded by its index, not by the history.

The caller has scoped the device to its tenant.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg.rows import dict_row

from usagehub.storage.pool import Connection
from usagehub.storage.queries import DESCRIBED_COLUMNS, POINT_METER

# The latest reading of each named meter of a device, each on its index: the newest row (events_rows: the
# id as text on TimescaleDB too, 0044) and the newest archived reading (a late row of an archived month can
# be older than a later archived month's readings; the newer wins), then that one reading described. Its
# cost does not grow with the device's history.
_LAST_READINGS_SQL = (
    f"SELECT {DESCRIBED_COLUMNS} FROM unnest(%s::text[]) AS w(meter) "
    "CROSS JOIN LATERAL (SELECT k.ts, k.event_id FROM ("
    " (SELECT ts, event_id FROM events_rows WHERE device_id = %s AND meter = w.meter "
    "  ORDER BY ts DESC, event_id DESC LIMIT 1) "
    " UNION ALL SELECT ts, event_id FROM events_archive_nearest(%s, w.meter, '-infinity', '', 'infinity', '', "
    " true)) k ORDER BY k.ts DESC, k.event_id DESC LIMIT 1) k "
    "JOIN events_all e ON e.device_id = %s AND e.meter = w.meter AND e.ts = k.ts AND e.event_id = k.event_id "
    "AND e.day = events_archive_day(k.ts) LEFT JOIN event_meta m ON m.meta_id = e.meta_id ORDER BY e.meter")


async def last_readings(conn: Connection, device_id: str, meters: Sequence[str]) -> list[dict[str, Any]]:
    """The latest reading (by device time) of each of ``meters`` of a device that has one, described."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(_LAST_READINGS_SQL, (sorted(set(meters)), device_id, device_id, device_id))
    return await cur.fetchall()


async def device_meters(conn: Connection, device_id: str) -> list[str]:
    """The meters of a device with a register state (cumulative meters), on the state's key."""
    cur = await conn.execute("SELECT meter FROM meter_state WHERE device_id = %s", (device_id,))
    return [str(r[0]) for r in await cur.fetchall()]


async def period_usage(conn: Connection, device_id: str, start: datetime, end: datetime) -> dict[str, Decimal]:
    """A device's usage per meter in ``(start, end]`` from its usage points (corrections included)."""
    cur = await conn.execute(
        f"SELECT {POINT_METER}, sum(p.value) FROM session_points p WHERE p.device_id = %s "
        "AND p.end_ts > %s AND p.end_ts <= %s AND p.kind = 'usage' AND p.entry_ref IS NOT NULL GROUP BY 1",
        (device_id, start, end))
    return {str(r[0]): Decimal(str(r[1])) for r in await cur.fetchall()}
