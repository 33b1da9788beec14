"""Migration 0033: the prepaid batch read finds each device's binding by device, not by scanning the fleet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from usagehub.core.prepaid import AuthRequest, Denial, Grant, Reason
from usagehub.prepaid.service import FlatPricer, PrepaidService
from usagehub.storage.registry import Registry

T0 = datetime(2026, 11, 21, 12, tzinfo=UTC)
PRICES = {"energy": Decimal("0.25")}
FLEET = 3000


def clock() -> datetime:
    return T0


async def test_binding_at_the_time_of_the_request(pool: AsyncConnectionPool) -> None:
    """A rebound device is charged to the account that holds it now, each tenant's device to its own; past and future
    bindings are not taken; a device bound only later is refused as not bound, nothing debited."""
    reg = Registry(pool)
    await reg.upsert_account(account_id="old", tenant="t1", prepaid=True)
    await reg.upsert_account(account_id="new", tenant="t1", prepaid=True)
    await reg.upsert_account(account_id="other", tenant="t2", prepaid=True)
    await reg.upsert_device(device_id="m1", tenant="t1", profile_id="acme-em340")
    await reg.upsert_device(device_id="m2", tenant="t2", profile_id="acme-em340")
    await reg.upsert_device(device_id="later", tenant="t1", profile_id="acme-em340")
    await reg.bind(device_id="m1", account_id="old", valid_from=T0 - timedelta(days=30), tenant="t1")
    await reg.bind(device_id="m1", account_id="new", valid_from=T0 - timedelta(days=1), tenant="t1")
    await reg.bind(device_id="m2", account_id="other", valid_from=T0 - timedelta(days=30), tenant="t2")
    await reg.bind(device_id="later", account_id="old", valid_from=T0 + timedelta(days=1), tenant="t1")
    service = PrepaidService(pool, FlatPricer(PRICES), reservation_ttl_s=60, clock=clock)
    try:
        for account in ("old", "new", "other"):
            await service.top_up(account_id=account, amount=Decimal("10.00"), payment_ref=f"pay-{account}")
        grant = await service.authorize(AuthRequest(device_id="m1", units=Decimal(4)))
        other = await service.authorize(AuthRequest(device_id="m2", units=Decimal(8)))
        denial = await service.authorize(AuthRequest(device_id="later", units=Decimal(4)))
    finally:
        await service.close()
    assert isinstance(grant, Grant) and grant.account_id == "new" and grant.amount == Decimal("1.00")
    assert isinstance(other, Grant) and other.account_id == "other" and other.amount == Decimal("2.00")
    assert isinstance(denial, Denial) and denial.reason is Reason.DEVICE_NOT_BOUND
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT account_id, balance, held FROM prepaid_accounts ORDER BY account_id")
        rows = await cur.fetchall()
    assert rows == [("new", Decimal("9.00"), Decimal("1.00")), ("old", Decimal("10.00"), Decimal(0)),
                    ("other", Decimal("8.00"), Decimal("2.00"))]


async def test_batch_read_does_not_scan_the_fleet(pool: AsyncConnectionPool) -> None:
    """With FLEET bound devices, a batch naming one device reads a handful of binding rows, not all."""
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO accounts (account_id, prepaid) VALUES ('a1', true)")
        await conn.execute("INSERT INTO devices (device_id, profile_id) "
                           "SELECT 'd' || i, 'acme-em340' FROM generate_series(1, %s) i", (FLEET,))
        await conn.execute("INSERT INTO bindings (device_id, account_id, valid) "
                           "SELECT 'd' || i, 'a1', tstzrange(%s, NULL) FROM generate_series(1, %s) i",
                           (T0 - timedelta(days=1), FLEET))
        await conn.execute("ANALYZE bindings")
        await conn.commit()
    async with pool.connection() as conn, conn.transaction():
        before = await bindings_rows_read(conn)  # counts not yet flushed include the inserts' checks
        for _ in range(3):  # the generic plan is chosen from the first call on: every call counts
            cur = await conn.execute("SELECT prepaid_batch_read(%s, %s, '{}', '{}', '{}', '{}', '{}')",
                                     ([f"d{FLEET}"], T0))
            row = await cur.fetchone()
            assert row is not None and row[0]["devices"] == [[f"d{FLEET}", "a1", "default"]]
        read = await bindings_rows_read(conn) - before
    assert read <= 3 * 4, read


async def test_batch_read_finds_bindings_through_the_btree(pool: AsyncConnectionPool) -> None:
    """Migration 0050: each device's binding is probed in the btree, never in the exclusion constraint's GiST
    index (13-23 us a probe); what is found is the same: the binding valid then, none for an unbound device."""
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO accounts (account_id, prepaid) VALUES ('a1', true), ('a2', true)")
        await conn.execute("INSERT INTO devices (device_id, profile_id) "
                           "SELECT 'd' || i, 'acme-em340' FROM generate_series(1, 400) i")
        await conn.execute("INSERT INTO bindings (device_id, account_id, valid) "
                           "SELECT 'd' || i, 'a1', tstzrange(%s, %s) FROM generate_series(1, 399) i",
                           (T0 - timedelta(days=9), T0 - timedelta(days=1)))
        await conn.execute("INSERT INTO bindings (device_id, account_id, valid) "
                           "SELECT 'd' || i, 'a2', tstzrange(%s, NULL) FROM generate_series(1, 399) i",
                           (T0 - timedelta(days=1),))
        await conn.execute("ANALYZE bindings")
        await conn.commit()
    scans = ("SELECT pg_stat_get_xact_numscans('bindings_device_c'::regclass), "
             "pg_stat_get_xact_numscans('bindings_no_overlap'::regclass)")
    async with pool.connection() as conn, conn.transaction():
        before = await (await conn.execute(scans)).fetchone()  # not yet flushed: the inserts' checks count
        assert before is not None
        for at, account in ((T0, "a2"), (T0 - timedelta(days=2), "a1")):
            for _ in range(3):  # the generic plan is chosen from the first call on: every call counts
                cur = await conn.execute("SELECT prepaid_batch_read(%s, %s, '{}', '{}', '{}', '{}', '{}')",
                                         (["d7", "d400"], at))
                row = await cur.fetchone()
                assert row is not None
                assert sorted(row[0]["devices"]) == [["d400", None, "default"], ["d7", account, "default"]]
        after = await (await conn.execute(scans)).fetchone()
        assert after is not None
    assert (after[0] - before[0], after[1] - before[1]) == (12, 0)  # six calls, two devices each


async def bindings_rows_read(conn: AsyncConnection[Any]) -> int:
    """Rows of ``bindings`` read by this backend and not yet flushed to the cumulative statistics."""
    cur = await conn.execute("SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) "
                             "FROM pg_stat_xact_user_tables WHERE relname = 'bindings'")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])
