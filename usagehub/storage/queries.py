"""Read queries for the API, each scoped to one tenant: events, quarantine, usage, ownership. Keyset paging."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from usagehub.storage.ingest_totals import read_totals

BUCKETS = {"HOUR": "hour", "DAY": "day", "MONTH": "month"}


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageBucket:
    """Usage of one meter of an account in one time bucket."""

    start: datetime
    meter: str
    quantity: Decimal
    unit: str


class Reads:
    """SQL read side used by GraphQL resolvers."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def _rows(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql, params)
            return await cur.fetchall()

    async def events(self, *, tenant: str, device_id: str, meter: str | None, since: datetime | None,
                     until: datetime | None, after: tuple[datetime, str, str] | None,
                     limit: int, newest_first: bool = False) -> list[dict[str, Any]]:
        """Events of one device in time order (or newest first), keyset-paged on (ts, meter, event_id).

        Archived events included (``events_all``, storage/archive.py): the bounds on ``day`` repeat those on
        ``ts`` so that only the archived days in range are unnested.
        """
        a_ts, a_meter, a_id = after if after else (None, None, None)
        beyond, order = ("<", "DESC") if newest_first else (">", "ASC")  # fixed tokens, never input
        return await self._rows(
            f"SELECT {DESCRIBED_COLUMNS} FROM events_all e LEFT JOIN event_meta m USING (meta_id) "
            "JOIN devices d ON d.device_id = e.device_id WHERE e.device_id = %s AND d.tenant = %s "
            "AND (%s::text IS NULL OR e.meter = %s) "
            "AND (%s::timestamptz IS NULL OR (e.ts >= %s AND e.day >= events_archive_day(%s))) "
            "AND (%s::timestamptz IS NULL OR (e.ts < %s AND e.day <= events_archive_day(%s))) "
            f"AND (%s::timestamptz IS NULL OR ((e.ts, e.meter, e.event_id) {beyond} (%s, %s, %s) "
            f"AND e.day {beyond}= events_archive_day(%s))) "
            f"ORDER BY e.ts {order}, e.meter {order}, e.event_id {order} LIMIT %s",
            (device_id, tenant, meter, meter, since, since, since, until, until, until, a_ts, a_ts, a_meter, a_id,
             a_ts, limit))

    async def quarantine(self, *, tenant: str, reason: str | None, after: int | None, limit: int,
                         include_replayed: bool = False, device_id: str | None = None,
                         since: datetime | None = None, until: datetime | None = None) -> list[dict[str, Any]]:
        """The tenant's quarantined messages (by reason, device, received in [since, until)), keyset-paged."""
        return await self._rows(
            f"SELECT * FROM quarantine q WHERE {_QUARANTINE_TENANT} = %s AND (%s::text IS NULL OR reason = %s) "
            "AND (%s::text IS NULL OR device_id = %s) AND (%s::timestamptz IS NULL OR received_at >= %s) "
            "AND (%s::timestamptz IS NULL OR received_at < %s) "
            "AND (%s::bigint IS NULL OR quarantine_id > %s) AND (%s OR replayed_at IS NULL) "
            "ORDER BY quarantine_id LIMIT %s",
            (tenant, reason, reason, device_id, device_id, since, since, until, until, after, after,
             include_replayed, limit))

    async def ingest_totals(self) -> dict[str, int]:
        """Durable ingest totals of every hub on this database (survive restarts)."""
        return await read_totals(self.pool)

    async def quarantine_counts(self, *, tenant: str) -> dict[str, int]:
        """The tenant's open quarantine items per reason."""
        rows = await self._rows(f"SELECT reason, count(*) AS n FROM quarantine q WHERE replayed_at IS NULL "
                                f"AND {_QUARANTINE_TENANT} = %s GROUP BY reason ORDER BY reason", (tenant,))
        return {r["reason"]: int(r["n"]) for r in rows}

    async def usage(self, *, tenant: str, account_id: str, bucket: str, since: datetime, until: datetime,
                    meter: str | None) -> list[UsageBucket]:
        """Usage of an account per meter and bucket, in the account's time zone.

        Read from the account's usage points (migration 0041), as billing and the analytics series read
        them: usage belongs to the account that held the device when it was used (an entry across a
        binding change is split), and an interval's usage lands in the bucket where it starts. Usage of
        a device bound later becomes visible then (nothing is dropped). Corrections are included.
        """
        rows = await self._rows(
            "SELECT date_trunc(%s, p.start_ts AT TIME ZONE a.timezone) AT TIME ZONE a.timezone AS start, "
            f"{POINT_METER} AS meter, sum(p.value) AS quantity, max(p.entry_unit) AS unit, "
            "max(a.timezone) AS tz FROM session_points p JOIN accounts a ON a.account_id = p.account_id "
            "WHERE p.account_id = %s AND a.tenant = %s AND p.start_ts >= %s AND p.start_ts < %s "
            f"AND p.kind = 'usage' AND p.entry_ref IS NOT NULL AND (%s::text IS NULL OR {POINT_METER} = %s) "
            "GROUP BY 1, 2 ORDER BY 1, 2",
            (BUCKETS[bucket], account_id, tenant, since, until, meter, meter))
        return [UsageBucket(start=r["start"].astimezone(ZoneInfo(r["tz"])), meter=r["meter"],
                            quantity=r["quantity"], unit=r["unit"]) for r in rows]

    # --- tenant scoping --------------------------------------------------------------------------

    async def owner(self, kind: str, ident: str) -> str | None:
        """The tenant owning an account, device, card, reservation or quarantine item; None if unknown."""
        if kind == "quarantine" and not ident.isdigit():
            return None
        rows = await self._rows(_OWNER[kind], (ident,))
        return str(rows[0]["tenant"]) if rows and rows[0]["tenant"] is not None else None

    async def bindings(self, *, tenant: str, device_id: str | None, account_id: str | None) -> list[dict[str, Any]]:
        """Bindings of the tenant's device or account (every binding of the tenant when neither is given)."""
        return await self._rows(
            "SELECT b.binding_id, b.device_id, b.account_id, lower(b.valid) AS valid_from, "
            "upper(b.valid) AS valid_to FROM bindings b JOIN accounts a USING (account_id) "
            "JOIN devices d ON d.device_id = b.device_id WHERE a.tenant = %s AND d.tenant = %s "
            "AND (%s::text IS NULL OR b.device_id = %s) AND (%s::text IS NULL OR b.account_id = %s) "
            "ORDER BY b.device_id, lower(b.valid) LIMIT 10000",
            (tenant, tenant, device_id, device_id, account_id, account_id))

    async def card_attempts(self, *, tenant: str, card_id: str, limit: int) -> list[dict[str, Any]]:
        """Refused presentations of a card made against the tenant's accounts or by its devices."""
        return await self._rows(
            "SELECT t.card_id, t.account_id, t.operation, t.reason, t.device_id, t.at FROM prepaid_card_attempts t "
            "LEFT JOIN accounts a ON a.account_id = t.account_id LEFT JOIN devices d ON d.device_id = t.device_id "
            "WHERE t.card_id = %s AND (a.tenant = %s OR (a.tenant IS NULL AND d.tenant = %s)) "
            "ORDER BY t.attempt_id DESC LIMIT %s", (card_id, tenant, tenant, limit))


# The columns of the view events_described (migration 0024), in its order.
# The columns of events_described, read from events_all e and event_meta m (day bounds need events_all).
# The meter of a usage point: the second field of its entry reference (kind, meter, cause; storage.sessions).
POINT_METER = "split_part(p.entry_ref, E'\\x1f', 2)"
DESCRIBED_COLUMNS = ("e.device_id, e.meter, e.ts, e.event_id, e.value, m.unit, m.kind, m.profile_id, m.service, "
              "e.received_at, e.reset_marker, e.text_value, e.ingested_at")
# Quarantine items belong to the tenant of their device; items without a registered device belong to
# the hub's own tenant (HUB_TENANT): they may hold any tenant's bytes, so only the operator sees them.
HUB_TENANT = "default"
_QUARANTINE_TENANT = f"coalesce((SELECT d.tenant FROM devices d WHERE d.device_id = q.device_id), '{HUB_TENANT}')"
_OWNER = {
    "account": "SELECT tenant FROM accounts WHERE account_id = %s",
    "device": "SELECT tenant FROM devices WHERE device_id = %s",
    "card": "SELECT a.tenant FROM prepaid_cards c JOIN accounts a USING (account_id) WHERE c.card_id = %s",
    "reservation": "SELECT a.tenant FROM prepaid_reservations r JOIN accounts a USING (account_id) "
                   "WHERE r.reservation_id = %s",
    "quarantine": f"SELECT {_QUARANTINE_TENANT} AS tenant FROM quarantine q WHERE q.quarantine_id = %s::bigint",
}

