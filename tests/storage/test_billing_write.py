"""write_records: one statement writes the records and, for exactly the rows it wrote, their versions."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from psycopg_pool import AsyncConnectionPool

from usagehub.core.billing import BillingRecord, RecordStatus
from usagehub.core.periods import Period
from usagehub.errors import StorageError
from usagehub.storage.billing import write_records

NOV = Period(start=datetime(2026, 10, 31, 23, tzinfo=UTC), end=datetime(2026, 11, 30, 23, tzinfo=UTC), label="2026-11")


def rec(account: str, quantity: str, version: int, status: RecordStatus = RecordStatus.OPEN) -> BillingRecord:
    return BillingRecord(record_id=f"{account}/2026-11/energy", account_id=account, period=NOV, product="energy",
                         quantity=Decimal(quantity), unit="kWh", status=status, version=version)


async def _versions(pool: AsyncConnectionPool) -> list[tuple[str, int, Decimal, str]]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT record_id, version, quantity, status FROM billing_record_versions "
                                 "ORDER BY 1, 2")
        return [(str(r[0]), int(r[1]), r[2], str(r[3])) for r in await cur.fetchall()]


async def test_each_written_version_is_logged_and_a_stale_one_rolls_the_write_back(pool: AsyncConnectionPool) -> None:
    async with pool.connection() as conn, conn.transaction():
        await write_records(conn, [rec("t1-acc", "5.000", 1), rec("t2-acc", "1.5", 1)])
    async with pool.connection() as conn, conn.transaction():
        await write_records(conn, [rec("t1-acc", "7.250", 2, RecordStatus.CLOSED)])
    assert await _versions(pool) == [("t1-acc/2026-11/energy", 1, Decimal("5.000"), "open"),
                                     ("t1-acc/2026-11/energy", 2, Decimal("7.250"), "closed"),
                                     ("t2-acc/2026-11/energy", 1, Decimal("1.5"), "open")]
    # A writer that read version 1 of t1's record (another wrote 2 since) and a new version of t2's: refused whole.
    with pytest.raises(StorageError, match="changed concurrently"):
        async with pool.connection() as conn, conn.transaction():
            await write_records(conn, [rec("t1-acc", "9", 2), rec("t2-acc", "2.5", 2)])
    assert len(await _versions(pool)) == 3
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT record_id, quantity, version FROM billing_records ORDER BY 1")
        assert [tuple(r) for r in await cur.fetchall()] == [("t1-acc/2026-11/energy", Decimal("7.250"), 2),
                                                           ("t2-acc/2026-11/energy", Decimal("1.5"), 1)]
