"""OperationsService: alerts of a tenant (list, acknowledge, export, silent-device sweep) and revenue assurance."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from psycopg_pool import AsyncConnectionPool

from usagehub.core.alerts import burst_alerts, silent_alerts
from usagehub.core.csvsafe import safe_cell
from usagehub.core.decode import ProfileSet
from usagehub.errors import DomainError
from usagehub.storage.alerts import (
    AlertRow,
    acknowledge,
    last_seen,
    list_alerts,
    quarantine_bursts,
    raise_device_alerts,
)
from usagehub.storage.assurance import AssuranceRow, revenue_assurance
from usagehub.storage.consumer import holds_account
from usagehub.storage.pool import mapped_errors

MAX_RANGE = timedelta(days=92)


class OperationsService:
    """What the console and the operations API fields call."""

    def __init__(self, pool: AsyncConnectionPool, profiles: ProfileSet,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.pool = pool
        self.clock = clock or (lambda: datetime.now(UTC))
        self.profiles = profiles

    @property
    def silent_after(self) -> dict[str, timedelta]:
        """Each profile's ``silent_after_s`` (read from the profiles in force: they can change while running)."""
        return {c.profile.id: timedelta(seconds=c.profile.silent_after_s)
                for c in self.profiles.compiled if c.profile.silent_after_s}

    async def alerts(self, *, tenant: str, open_only: bool = False, kind: str | None = None,
                     after: int | None = None, limit: int = 50) -> list[AlertRow]:
        """The tenant's alerts, newest first."""
        async with mapped_errors(), self.pool.connection() as conn:
            return await list_alerts(conn, tenant=tenant, open_only=open_only, kind=kind, after=after, limit=limit)

    async def acknowledge(self, *, tenant: str, ids: Sequence[int], by: str) -> list[AlertRow]:
        """Acknowledge alerts; an id that is not the tenant's is NOT_FOUND (and nothing is acknowledged)."""
        async with mapped_errors(), self.pool.connection() as conn, conn.transaction():
            done = await acknowledge(conn, tenant=tenant, ids=ids, by=by)
            missing = sorted(set(ids) - {a.alert_id for a in done})
            if missing:
                raise DomainError("NOT_FOUND", f"no alert {missing[0]}")
            return done

    async def sweep_silent(self) -> int:
        """Raise one "silent" alert per device quiet past its profile's ``silent_after_s``; return how many."""
        silent_after = self.silent_after
        if not silent_after:
            return 0
        async with mapped_errors(), self.pool.connection() as conn, conn.transaction():
            seen = await last_seen(conn, sorted(silent_after))
            return await raise_device_alerts(conn, silent_alerts(seen, silent_after, self.clock()))

    async def sweep_bursts(self, *, window: timedelta = timedelta(minutes=10), threshold: int = 20) -> int:
        """Raise a "quarantine_burst" alert for each device whose quarantine grew by ``threshold`` in ``window``."""
        now = self.clock()
        async with mapped_errors(), self.pool.connection() as conn, conn.transaction():
            bursts = await quarantine_bursts(conn, since=now - window, threshold=threshold)
            return await raise_device_alerts(conn, burst_alerts(bursts, window, now))

    async def revenue_assurance(self, *, tenant: str, since: datetime, until: datetime,
                                account_id: str | None = None, limit: int = 1000) -> list[AssuranceRow]:
        """Per account, day and product: events, quarantined, billable, unbound and adjustments."""
        if until <= since or until - since > MAX_RANGE:
            raise DomainError("BAD_REQUEST", f"the range must be positive and at most {MAX_RANGE.days} days")
        async with mapped_errors(), self.pool.connection() as conn:
            if account_id is not None and not await holds_account(conn, tenant=tenant, account_id=account_id):
                raise DomainError("NOT_FOUND", f"no account {account_id!r}")
            return await revenue_assurance(conn, tenant=tenant, since=since, until=until, account_id=account_id,
                                           limit=limit)

    async def alerts_csv(self, *, tenant: str, limit: int = 10_000) -> str:
        """The tenant's alerts as CSV (newest first), safe to open in a spreadsheet."""
        rows = await self.alerts(tenant=tenant, limit=limit)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["id", "kind", "severity", "account", "device", "message", "raised_at", "acked_at",
                         "acked_by"])
        for a in rows:
            writer.writerow([a.alert_id, a.kind, a.severity, safe_cell(a.account_id), safe_cell(a.device_id),
                             safe_cell(a.message), a.raised_at.isoformat(),
                             a.acked_at.isoformat() if a.acked_at else "", safe_cell(a.acked_by)])
        return out.getvalue()
