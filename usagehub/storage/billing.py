"""Billing records in storage: reconcile touched periods, billing runs, markBilled; billed is final.

``RecordBook.reconcile`` runs inside the ingest (or correction) transaction for
the (account, period) pairs whose sessions changed: it reads their truth, kept
per period (``storage.period_truth``: what ``core.billing.truth_from_sessions``
gives, without reading the sessions), and writes what ``core.billing.reconcile``
returns. A billed record is never updated (the database refuses it too); late
data for it becomes an adjustment record in the account's next open period,
the one after its latest billing run.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from usagehub.core.billing import (
    BillingRecord,
    RecordKind,
    RecordStatus,
    bill,
    close_records,
    reconcile,
)
from usagehub.core.periods import Period, period_of
from usagehub.errors import DomainError, StorageError
from usagehub.storage.period_truth import kept_truth
from usagehub.storage.pool import Connection
from usagehub.storage.sessions import Clock, Pair, lock_accounts, utc

RECORD_COLUMNS = ("record_id, account_id, period_start, period_end, period_label, product, quantity, unit, status, "
                  "kind, adjusts, version")


def record_of(row: Sequence[Any]) -> BillingRecord:
    """A record from a row selected with ``RECORD_COLUMNS``."""
    rid, account, p_start, p_end, label, product, quantity, unit, status, kind, adjusts, version = row
    return BillingRecord(record_id=rid, account_id=account, period=Period(start=utc(p_start), end=utc(p_end),
                                                                          label=label),
                         product=product, quantity=quantity, unit=unit, status=RecordStatus(status),
                         kind=RecordKind(kind), adjusts=adjusts, version=version)


def period_by_label(label: str, zone: ZoneInfo) -> Period:
    """The period ``YYYY-MM`` of an account in ``zone``; BAD_PERIOD when the label is not one."""
    try:
        year, month = (int(x) for x in label.split("-"))
        middle = datetime(year, month, 15, tzinfo=zone)
    except ValueError as err:
        raise DomainError("BAD_PERIOD", f"period must be YYYY-MM, not {label!r}") from err
    return period_of(middle, zone)


async def write_records(conn: Connection, records: Sequence[BillingRecord], run_id: int | None = None) -> None:
    """Insert new records and new versions of existing ones (a version only grows; billed is final)."""
    if not records:
        return
    cols = list(zip(*[(r.record_id, r.account_id, r.period.start, r.period.end, r.period.label, r.product,
                       r.quantity, r.unit, r.status.value, r.kind.value, r.adjusts, r.version) for r in records],
                    strict=True))
    # One statement: the versions are those of the rows the upsert wrote (its RETURNING), so a record changed
    # concurrently (its version already there) writes no version either, and the count says so.
    cur = await conn.execute(
        f"WITH w AS (INSERT INTO billing_records ({RECORD_COLUMNS}, billing_run, billed_at) "
        "SELECT *, %b::bigint, CASE WHEN s = 'billed' THEN now() END FROM unnest(%b::text[], %b::text[], "
        "%b::timestamptz[], %b::timestamptz[], %b::text[], %b::text[], %b::numeric[], %b::text[], %b::text[], "
        "%b::text[], %b::text[], %b::int[]) AS u(i, a, ps, pe, pl, p, q, un, s, k, adj, v) "
        "ON CONFLICT (record_id) DO UPDATE SET quantity = EXCLUDED.quantity, status = EXCLUDED.status, "
        "version = EXCLUDED.version, updated_at = now(), "
        "billing_run = coalesce(EXCLUDED.billing_run, billing_records.billing_run), "
        "billed_at = coalesce(billing_records.billed_at, EXCLUDED.billed_at) "
        "WHERE billing_records.version < EXCLUDED.version RETURNING record_id, version, quantity, status) "
        "INSERT INTO billing_record_versions (record_id, version, quantity, status) SELECT * FROM w",
        (run_id, *[list(c) for c in cols]))
    if cur.rowcount != len(records):
        raise StorageError("a billing record changed concurrently; the batch is retried")


class RecordBook:
    """Keeps billing records equal to the truth of the sessions, and runs billing."""

    def __init__(self, units: Mapping[str, str], clock: Clock) -> None:
        """``units`` maps each product to its unit (from the profiles)."""
        self.units, self.clock = dict(units), clock

    async def open_periods(self, conn: Connection, zones: Mapping[str, ZoneInfo]) -> dict[str, Period]:
        """Each account's next open period: the one after its latest billing run (else the current one)."""
        cur = await conn.execute(
            "SELECT account_id, max(period_end) FROM billing_runs WHERE account_id = ANY(%s) GROUP BY account_id",
            (sorted(zones),))
        last = {str(r[0]): utc(r[1]) for r in await cur.fetchall()}
        now = self.clock()
        out: dict[str, Period] = {}
        for account, zone in zones.items():
            current = period_of(now, zone)
            out[account] = period_of(last[account], zone) if account in last else current
        return out

    async def _records(self, conn: Connection, pairs: Collection[Pair]) -> list[BillingRecord]:
        items = sorted({(a, p.start) for a, p in pairs})
        cur = await conn.execute(
            f"WITH reg AS (SELECT {RECORD_COLUMNS} FROM billing_records WHERE (account_id, period_start) IN "
            "(SELECT * FROM unnest(%b::text[], %b::timestamptz[]))) "
            f"SELECT * FROM reg UNION SELECT {RECORD_COLUMNS} FROM billing_records "
            "WHERE adjusts IN (SELECT record_id FROM reg)",
            ([a for a, _ in items], [s for _, s in items]))
        return [record_of(r) for r in await cur.fetchall()]

    async def reconcile(self, conn: Connection, pairs: Collection[Pair], zones: Mapping[str, ZoneInfo]) -> None:
        """Bring the records of ``pairs`` in line with their sessions (caller holds the account locks)."""
        if not pairs:
            return
        truth = await kept_truth(conn, pairs)  # not every session of the periods: what each keeps
        records = await self._records(conn, pairs)
        accounts = {a for a, _ in pairs}
        opens = await self.open_periods(conn, {a: zones.get(a, ZoneInfo("UTC")) for a in accounts})
        changes = reconcile(truth, records, units=self.units, open_period_of=opens.__getitem__, scope=pairs)
        await write_records(conn, changes)

    async def settle(self, conn: Connection, records: Iterable[BillingRecord], *, author: str | None,
                     as_of: datetime) -> list[BillingRecord]:
        """Close (if their period ended) and bill ``records``; log one run per account and period billed."""
        records = list(records)
        closed = {r.record_id: r for r in close_records(records, as_of)}
        ready = [closed.get(r.record_id, r) for r in records]
        billed = bill(ready)
        if not billed:
            return []
        runs: dict[tuple[str, Period], int] = {}
        for r in billed:
            runs[(r.account_id, r.period)] = runs.get((r.account_id, r.period), 0) + 1
        for (account, period), n in sorted(runs.items()):
            await conn.execute(
                "INSERT INTO billing_runs (account_id, period_start, period_end, period_label, author, records) "
                "VALUES (%s, %s, %s, %s, %s, %s)", (account, period.start, period.end, period.label, author, n))
        by_id = {r.record_id: r for r in billed}
        # A record closed now and billed now is written once, at its final version.
        await write_records(conn, [by_id[r.record_id] for r in ready if r.record_id in by_id])
        return billed

    async def mark_billed(self, conn: Connection, record_ids: Sequence[str], *, author: str | None,
                          tenant: str) -> list[BillingRecord]:
        """Bill these records (closing those whose period has ended); an unfinished period is refused."""
        cur = await conn.execute(
            f"SELECT {RECORD_COLUMNS} FROM billing_records r JOIN accounts a USING (account_id) "
            "WHERE r.record_id = ANY(%s) AND a.tenant = %s", (list(record_ids), tenant))
        found = [record_of(r) for r in await cur.fetchall()]
        missing = set(record_ids) - {r.record_id for r in found}
        if missing:
            raise DomainError("NOT_FOUND", f"no billing record {sorted(missing)[0]!r}")
        await lock_accounts(conn, {r.account_id for r in found})
        cur = await conn.execute(f"SELECT {RECORD_COLUMNS} FROM billing_records WHERE record_id = ANY(%s)",
                                 (list(record_ids),))
        records = [record_of(r) for r in await cur.fetchall()]  # re-read under the lock
        now = self.clock()
        running = [r for r in records if r.status is RecordStatus.OPEN and r.period.end > now]
        if running:
            raise DomainError("PERIOD_NOT_ENDED", f"record {running[0].record_id} is in a period that has not "
                                                  "ended; it can be billed after it ends")
        await self.settle(conn, records, author=author, as_of=now)
        return [replace(r, status=RecordStatus.BILLED) if r.status is not RecordStatus.BILLED else r
                for r in records]

    async def run(self, conn: Connection, label: str, *, tenant: str, account_id: str | None,
                  author: str | None) -> list[BillingRecord]:
        """A billing run: close period ``label`` (and earlier leftovers) and bill every record in it."""
        cur = await conn.execute(
            "SELECT account_id, timezone FROM accounts WHERE tenant = %s AND (%s::text IS NULL OR account_id = %s) "
            "ORDER BY account_id", (tenant, account_id, account_id))
        zones = {str(r[0]): ZoneInfo(str(r[1])) for r in await cur.fetchall()}
        if account_id is not None and not zones:
            raise DomainError("UNKNOWN_ACCOUNT", f"account {account_id!r} does not exist")
        now = self.clock()
        await lock_accounts(conn, zones)
        billed: list[BillingRecord] = []
        for account, zone in zones.items():
            period = period_by_label(label, zone)
            if period.end > now:
                raise DomainError("PERIOD_NOT_ENDED", f"period {label} of {account} ends at "
                                                      f"{period.end.isoformat()}")
            cur = await conn.execute(
                f"SELECT {RECORD_COLUMNS} FROM billing_records WHERE account_id = %s AND period_end <= %s "
                "AND status <> 'billed'", (account, period.end))
            records = [record_of(r) for r in await cur.fetchall()]
            billed += await self.settle(conn, records, author=author, as_of=period.end)
            if not records:  # an empty run still moves the account's open period on
                await conn.execute(
                    "INSERT INTO billing_runs (account_id, period_start, period_end, period_label, author) "
                    "VALUES (%s, %s, %s, %s, %s)", (account, period.start, period.end, period.label, author))
        return billed

