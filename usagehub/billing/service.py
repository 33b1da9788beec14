"""What the billing API calls: sessions and records (keyset-paged), drill-down, runs, corrections, inspection."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from usagehub.core.billing import BillingRecord, RecordKind
from usagehub.core.counters import CorrectionEvent
from usagehub.core.periods import period_of
from usagehub.core.sessions import Session
from usagehub.errors import DomainError
from usagehub.pipeline.sessions import SessionEngine
from usagehub.storage.billing import RECORD_COLUMNS, period_by_label, record_of
from usagehub.storage.meter_view import device_meters, last_readings, period_usage
from usagehub.storage.pool import mapped_errors
from usagehub.storage.queries import DESCRIBED_COLUMNS
from usagehub.storage.session_queue import queued_accounts
from usagehub.storage.sessions import SESSION_COLUMNS, session_of


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterView:
    """One device meter as an operator inspects it."""

    device_id: str
    meter: str
    unit: str
    account_id: str | None
    last_value: Decimal
    last_reading_at: datetime
    last_received_at: datetime  # when the last reading (by device time) was received
    period_label: str
    period_total: Decimal
    last_state: str | None = None  # a state meter's last state name (armed, open…)


class BillingService:
    """Billing reads and writes over the pool, sharing the ingest's session engine."""

    def __init__(self, pool: AsyncConnectionPool, engine: SessionEngine) -> None:
        self.pool, self.engine = pool, engine

    async def _one_session(self, conn: Any, tenant: str, sid: str) -> Session | None:
        cur = await conn.execute(f"SELECT {', '.join('s.' + c for c in SESSION_COLUMNS.split(', '))} FROM sessions s "
                                 "JOIN accounts a USING (account_id) WHERE s.session_id = %s AND a.tenant = %s",
                                 (sid, tenant))
        row = await cur.fetchone()
        return None if row is None else session_of(row)

    async def sessions(self, *, tenant: str, account_id: str, since: datetime | None, until: datetime | None,
                       after: tuple[datetime, str] | None, limit: int) -> list[tuple[str, Session]]:
        """Sessions of an account that start in ``[since, until)``, keyset-paged on (start, id)."""
        a_ts, a_id = after if after else (None, None)
        cols = ", ".join("s." + c for c in SESSION_COLUMNS.split(", "))
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {cols} FROM sessions s JOIN accounts a USING (account_id) WHERE s.account_id = %s "
                "AND a.tenant = %s AND (%s::timestamptz IS NULL OR s.start_ts >= %s) "
                "AND (%s::timestamptz IS NULL OR s.start_ts < %s) "
                "AND (%s::timestamptz IS NULL OR (s.start_ts, s.session_id) > (%s, %s)) "
                "ORDER BY s.start_ts, s.session_id LIMIT %s",
                (account_id, tenant, since, since, until, until, a_ts, a_ts, a_id, limit))
            return [(str(r[0]), session_of(r)) for r in await cur.fetchall()]

    async def records(self, *, tenant: str, account_id: str, period: str | None, status: str | None,
                      after: str | None, limit: int) -> list[BillingRecord]:
        """Billing records of an account, optionally of one period label and status, paged by id."""
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {', '.join('r.' + c for c in RECORD_COLUMNS.split(', '))} FROM billing_records r "
                "JOIN accounts a USING (account_id) WHERE r.account_id = %s AND a.tenant = %s "
                "AND (%s::text IS NULL OR r.period_label = %s) AND (%s::text IS NULL OR r.status = %s) "
                "AND (%s::text IS NULL OR r.record_id > %s) ORDER BY r.record_id LIMIT %s",
                (account_id, tenant, period, period, status, status, after, after, limit))
            return [record_of(r) for r in await cur.fetchall()]

    async def record(self, *, tenant: str, record_id: str) -> BillingRecord | None:
        """One billing record."""
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {', '.join('r.' + c for c in RECORD_COLUMNS.split(', '))} FROM billing_records r "
                "JOIN accounts a USING (account_id) WHERE r.record_id = %s AND a.tenant = %s", (record_id, tenant))
            row = await cur.fetchone()
        return None if row is None else record_of(row)

    async def record_sessions(self, *, tenant: str, record: BillingRecord, after: tuple[datetime, str] | None,
                              limit: int) -> list[tuple[str, Session]]:
        """The sessions a record bills (an adjustment: those of the record it adjusts), paged on (start, id)."""
        target = record
        if record.kind is RecordKind.ADJUSTMENT and record.adjusts:
            target = await self.record(tenant=tenant, record_id=record.adjusts) or record
        a_ts, a_id = after if after else (None, None)
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE account_id = %s AND period_start = %s "
                "AND partials ? %s AND (%s::timestamptz IS NULL OR (start_ts, session_id) > (%s, %s)) "
                "ORDER BY start_ts, session_id LIMIT %s",
                (target.account_id, target.period.start, target.product, a_ts, a_ts, a_id, limit))
            return [(str(r[0]), session_of(r)) for r in await cur.fetchall()]

    async def session_events(self, *, tenant: str, session_id: str, after: tuple[datetime, str, str, str] | None,
                             limit: int) -> list[dict[str, Any]]:
        """Events of a session's devices and service within its span, keyset-paged."""
        async with mapped_errors(), self.pool.connection() as conn:
            session = await self._one_session(conn, tenant, session_id)
            if session is None:
                return []
            a = after or (None, None, None, None)
            async with conn.cursor(row_factory=dict_row) as cur:
                # events_all, not events_described: its day bounds (repeating those on ts) keep a read of an
                # archived month to the session's days (storage/archive.py), however many days are archived.
                await cur.execute(
                    f"SELECT {DESCRIBED_COLUMNS} FROM events_all e LEFT JOIN event_meta m ON m.meta_id = e.meta_id "
                    "WHERE e.device_id = ANY(%s) AND m.service = %s AND e.ts >= %s AND e.ts <= %s "
                    "AND e.day >= events_archive_day(%s) AND e.day <= events_archive_day(%s) "
                    "AND (%s::timestamptz IS NULL OR (e.ts, e.device_id, e.meter, e.event_id) > (%s, %s, %s, %s)) "
                    "ORDER BY e.ts, e.device_id, e.meter, e.event_id LIMIT %s",
                    (sorted(session.devices), session.service, session.start, session.end, session.start,
                     session.end, a[0], a[0], a[1], a[2], a[3], limit))
                return await cur.fetchall()

    async def mark_billed(self, *, tenant: str, record_ids: list[str], author: str) -> list[BillingRecord]:
        """Bill records by id (closing those of ended periods)."""
        async with mapped_errors(), self.pool.connection() as conn, conn.transaction():
            return await self.engine.book.mark_billed(conn, record_ids, author=author, tenant=tenant)

    async def run(self, *, tenant: str, period: str, account_id: str | None, author: str) -> list[BillingRecord]:
        """A billing run for period ``period`` (YYYY-MM) of one or every account of the tenant."""
        async with mapped_errors(), self.pool.connection() as conn, conn.transaction():
            # Sessions replayed by session workers: what they have not replayed yet is replayed here first.
            queued = await queued_accounts(conn, tenant=tenant, account_id=account_id)
            if queued:
                await self.engine.replay_queued(conn, limit=None, accounts=queued, skip_locked=False)
            return await self.engine.book.run(conn, period, tenant=tenant, account_id=account_id, author=author)

    async def correct(self, *, tenant: str, device_id: str, meter: str, ts: datetime, quantity: Decimal,
                      reason: str, author: str) -> tuple[int, str]:
        """Append a correction entry (never an edit) and recompute sessions and records; (entry id, unit)."""
        correction = CorrectionEvent(correction_id=f"c:{uuid.uuid4().hex}", device_id=device_id, meter=meter,
                                     ts=ts, quantity=quantity, reason=reason, author=author)
        async with mapped_errors(), self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT profile_id FROM devices WHERE device_id = %s AND tenant = %s",
                                     (device_id, tenant))
            row = await cur.fetchone()
            if row is None:
                raise DomainError("UNKNOWN_DEVICE", f"device {device_id!r} is not registered")
            info = self.engine.info(str(row[0]), meter)
            compiled = self.engine.profiles.by_id.get(str(row[0]))
            if info is None or compiled is None:
                raise DomainError("UNKNOWN_METER", f"device {device_id!r} has no meter {meter!r}")
            unit = compiled.profile.meters[meter].unit
            entry = correction.entry()
            cur = await conn.execute(
                "INSERT INTO usage_corrections (device_id, meter, ts, quantity, unit, service, correction_id, "
                "reason, author) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING entry_id",
                (device_id, meter, entry.ts, quantity, unit, info.service, correction.correction_id, reason, author))
            got = await cur.fetchone()
            assert got is not None
            await self.engine.absorb(conn, [(entry, info)], [])
        return int(got[0]), unit

    def _record_product(self, profile_id: str, meter: str) -> str | None:
        """The product of a gauge or state meter (None for meters whose usage is summed from entries)."""
        compiled = self.engine.profiles.by_id.get(profile_id)
        spec = compiled.profile.meters.get(meter) if compiled else None
        if spec is None or str(spec.kind) not in ("gauge", "state"):
            return None
        return spec.product or meter

    async def inspect(self, *, tenant: str, device_id: str | None, account_id: str | None,
                      search: str | None, limit: int = 50) -> list[MeterView]:
        """Last reading (and when it was received) and current-period total of each meter of the chosen devices."""
        now = self.engine.clock()
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT d.device_id, b.account_id, a.timezone, d.profile_id FROM devices d LEFT JOIN bindings b "
                "ON b.device_id = d.device_id AND b.valid @> %s::timestamptz "
                "LEFT JOIN accounts a ON a.account_id = b.account_id WHERE d.tenant = %s "
                "AND (%s::text IS NULL OR d.device_id = %s) AND (%s::text IS NULL OR b.account_id = %s) "
                "AND (%s::text IS NULL OR d.device_id ILIKE %s OR d.name ILIKE %s OR b.account_id ILIKE %s "
                "OR a.name ILIKE %s) ORDER BY d.device_id LIMIT %s",  # quick search: device, serial or account
                (now, tenant, device_id, device_id, account_id, account_id, search, *[f"%{search}%"] * 4, limit))
            devices = [(str(r[0]), r[1], ZoneInfo(str(r[2] or "UTC")), str(r[3])) for r in await cur.fetchall()]
            out: list[MeterView] = []
            for dev, account, zone, profile_id in devices:
                period = period_of(now, zone)
                compiled = self.engine.profiles.by_id.get(profile_id)
                meters = [*(compiled.profile.meters if compiled else ()), *await device_meters(conn, dev)]
                last = [(r["meter"], r["value"], r["unit"], r["ts"], r["received_at"], r["profile_id"],
                         r["text_value"]) for r in await last_readings(conn, dev, meters)]
                totals = await period_usage(conn, dev, period.start, period.end)
                # Gauges and states leave no usage points: their period value is the billing record's
                # (max kW, seconds armed…), which merges the account's devices of that product.
                for m, _v, _u, _ts, _rec, profile, _state in last:
                    product = self._record_product(str(profile), str(m))
                    if product is not None and account is not None:
                        cur = await conn.execute(
                            "SELECT sum(quantity) FROM billing_records WHERE account_id = %s AND product = %s "
                            "AND period_label = %s", (account, product, period.label))
                        row = await cur.fetchone()
                        totals[str(m)] = row[0] if row and row[0] is not None else Decimal(0)
                out += [MeterView(device_id=dev, meter=str(m), unit=str(u), account_id=account, last_value=v,
                                  last_reading_at=ts, last_received_at=rec, period_label=period.label,
                                  period_total=totals.get(str(m), Decimal(0)), last_state=state)
                        for m, v, u, ts, rec, _profile, state in last]
            return out


__all__ = ["BillingService", "MeterView", "period_by_label"]
