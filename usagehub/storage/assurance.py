"""Revenue assurance in SQL: per account and day, what was received, billed, quarantined, unbound and adjusted.

Days are the account's local days. Usage is compared per product (units never mix):
``billable`` is what was allocated to the account (what its sessions and billing
records are built from); ``unbound`` is usage of the tenant's devices that no
binding covered (kept, billable once bound); ``adjustments`` are adjustment
records written that day. Events and quarantined messages are counted per device
bound to the account at the time; archived events (``events_all``, storage/archive.py) count too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from usagehub.storage.pool import Connection


@dataclass(frozen=True, slots=True, kw_only=True)
class AssuranceRow:
    """One account (None: the tenant's unbound devices), day and product."""

    account_id: str | None
    day: date
    product: str
    events: int
    quarantined: int
    billable: Decimal
    unbound: Decimal
    adjustments: Decimal


_SQL = """
WITH acc AS (
    SELECT account_id, timezone FROM accounts
    WHERE tenant = %(tenant)s AND (%(account)s::text IS NULL OR account_id = %(account)s)
), usage AS (
    SELECT p.account_id, (p.start_ts AT TIME ZONE acc.timezone)::date AS day, p.product,
           sum(p.value) AS billable
    FROM session_points p JOIN acc USING (account_id)
    WHERE p.kind = 'usage' AND p.start_ts >= %(since)s AND p.start_ts < %(until)s
    GROUP BY 1, 2, 3
), unbound AS (
    SELECT NULL::text AS account_id, (p.start_ts AT TIME ZONE 'UTC')::date AS day, p.product,
           sum(p.value) AS unbound
    FROM session_points p JOIN devices d ON d.device_id = p.device_id AND d.tenant = %(tenant)s
    WHERE %(account)s::text IS NULL AND p.account_id IS NULL AND p.kind = 'usage'
      AND p.start_ts >= %(since)s AND p.start_ts < %(until)s
    GROUP BY 1, 2, 3
), received AS (
    SELECT b.account_id, (e.ts AT TIME ZONE acc.timezone)::date AS day, count(*) AS events
    FROM events_all e JOIN bindings b ON b.device_id = e.device_id AND b.valid @> e.ts
    JOIN acc ON acc.account_id = b.account_id
    WHERE e.ts >= %(since)s AND e.ts < %(until)s
    GROUP BY 1, 2
), quarantined AS (
    SELECT b.account_id, (q.received_at AT TIME ZONE acc.timezone)::date AS day, count(*) AS quarantined
    FROM quarantine q JOIN bindings b ON b.device_id = q.device_id AND b.valid @> q.received_at
    JOIN acc ON acc.account_id = b.account_id
    WHERE q.received_at >= %(since)s AND q.received_at < %(until)s
    GROUP BY 1, 2
), adjusted AS (
    SELECT r.account_id, (r.updated_at AT TIME ZONE acc.timezone)::date AS day, r.product,
           sum(r.quantity) AS adjustments
    FROM billing_records r JOIN acc USING (account_id)
    WHERE r.kind = 'adjustment' AND r.updated_at >= %(since)s AND r.updated_at < %(until)s
    GROUP BY 1, 2, 3
), keys AS (
    SELECT account_id, day, product FROM usage
    UNION SELECT account_id, day, product FROM adjusted
    UNION SELECT account_id, day, product FROM unbound
    UNION SELECT account_id, day, '' FROM received
    UNION SELECT account_id, day, '' FROM quarantined
)
SELECT k.account_id, k.day, k.product,
       CASE WHEN k.product = '' THEN coalesce(r.events, 0) ELSE 0 END,
       CASE WHEN k.product = '' THEN coalesce(q.quarantined, 0) ELSE 0 END,
       coalesce(u.billable, 0), coalesce(n.unbound, 0), coalesce(a.adjustments, 0)
FROM keys k
LEFT JOIN usage u ON u.account_id = k.account_id AND u.day = k.day AND u.product = k.product
LEFT JOIN unbound n ON k.account_id IS NULL AND n.day = k.day AND n.product = k.product
LEFT JOIN adjusted a ON a.account_id = k.account_id AND a.day = k.day AND a.product = k.product
LEFT JOIN received r ON r.account_id = k.account_id AND r.day = k.day
LEFT JOIN quarantined q ON q.account_id = k.account_id AND q.day = k.day
ORDER BY k.day, k.account_id NULLS LAST, k.product
LIMIT %(limit)s
"""


async def revenue_assurance(conn: Connection, *, tenant: str, since: datetime, until: datetime,
                            account_id: str | None, limit: int) -> list[AssuranceRow]:
    """Rows of ``tenant`` (one account, or all plus the unbound devices) between ``since`` and ``until``.

    A row with product ``""`` carries the day's event and quarantine counts; product rows carry usage.
    """
    cur = await conn.execute(_SQL, {"tenant": tenant, "account": account_id, "since": since, "until": until,
                                    "limit": limit})
    rows: list[Any] = await cur.fetchall()
    return [AssuranceRow(account_id=r[0], day=r[1], product=str(r[2]), events=int(r[3]), quarantined=int(r[4]),
                         billable=r[5], unbound=r[6], adjustments=r[7]) for r in rows]
