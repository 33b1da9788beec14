"""Reservation ids drawn once per batch, and exact decisions under concurrent batches (p24's cheaper deciding)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from decimal import Decimal

from psycopg_pool import AsyncConnectionPool

from tests.storage.test_prepaid import PRICES, T0, Clock, balance
from usagehub.adapters.prepaid_port import CommitRequest, DeviceRequest
from usagehub.core.prepaid import AuthRequest, Denial, Grant, Reason
from usagehub.prepaid.service import FlatPricer, PrepaidService
from usagehub.storage.registry import Registry


async def two_tenants(pool: AsyncConnectionPool) -> None:
    """Account ``ta`` (tenant A, device ``da``), ``tb`` (tenant B, device ``db``) and a card of ``tb``."""
    reg = Registry(pool)
    for account, device, tenant in (("ta", "da", "default"), ("tb", "db", "tenant-b")):
        await reg.upsert_account(account_id=account, prepaid=True, tenant=tenant)
        await reg.upsert_device(device_id=device, profile_id="acme-em340", tenant=tenant)
        await reg.bind(device_id=device, account_id=account, valid_from=T0 - timedelta(days=3), tenant=tenant)
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO prepaid_cards (card_id, account_id) VALUES ('card-b', 'tb')")


async def test_concurrent_batches_grant_unique_uuid4_ids_and_refuse_the_overdraft(pool: AsyncConnectionPool) -> None:
    """Eight batches on two transactions: every grant has its own version-4 id, each tenant's account holds
    exactly what it had, the rest is INSUFFICIENT_BALANCE, and a hostile card is refused, not charged."""
    await two_tenants(pool)
    svc = PrepaidService(pool, FlatPricer(PRICES), workers=2, clock=Clock())
    try:
        await svc.top_up(account_id="ta", amount=Decimal("3.00"), payment_ref="p-a")
        await svc.top_up(account_id="tb", amount=Decimal("2.00"), payment_ref="p-b")
        batches: list[list[DeviceRequest]] = [
            [AuthRequest(device_id="da" if (b + i) % 2 else "db", units=Decimal(1), request_id=f"r{b}-{i}")
             for i in range(6)]
            + [AuthRequest(device_id="da", card_id="card-b", units=Decimal(1), request_id=f"h{b}")]  # hostile
            for b in range(8)]
        results = await asyncio.gather(*(svc.decide(batch) for batch in batches))
        flat = [r for batch in results for r in batch]
        grants = [r for r in flat if isinstance(r, Grant)]
        ids = [g.reservation_id for g in grants]
        assert len(set(ids)) == len(ids) == 20  # 3.00 / 0.25 = 12 for ta, 2.00 / 0.25 = 8 for tb
        assert all(uuid.UUID(i).version == 4 and uuid.UUID(i).hex == i for i in ids)
        assert sorted(g.account_id for g in grants) == ["ta"] * 12 + ["tb"] * 8
        refused = [r.reason for r in flat if isinstance(r, Denial)]
        assert refused.count(Reason.UNKNOWN_CARD) == 8  # tenant B's card does not exist for tenant A's device
        assert refused.count(Reason.INSUFFICIENT_BALANCE) == len(flat) - 20 - 8
        assert await balance(pool, "ta") == (Decimal("0.00"), Decimal("3.00"), Decimal("0.00"))
        assert await balance(pool, "tb") == (Decimal("0.00"), Decimal("2.00"), Decimal("0.00"))
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT reservation_id, account_id FROM prepaid_reservations ORDER BY 1")
            stored = {str(r[0]): str(r[1]) for r in await cur.fetchall()}
        assert stored == {g.reservation_id: g.account_id for g in grants}
        # A device commits another tenant's reservation: unknown to it, nothing moves.
        foreign = next(g.reservation_id for g in grants if g.account_id == "tb")
        (hostile,) = await svc.decide([CommitRequest("da", foreign, Decimal(1))])
        assert hostile.reason is Reason.UNKNOWN_RESERVATION
        assert await balance(pool, "tb") == (Decimal("0.00"), Decimal("2.00"), Decimal("0.00"))
    finally:
        await svc.close()



async def test_batch_plans_stay_on_indexes_as_reservations_grow(database_url: str) -> None:
    """Migration 0040: a connection whose generic plans were made on empty tables reads no more reservations
    than the batch names once the table holds 3,000 (lock, repeats, reservations, the write's update)."""
    import re

    import psycopg

    read = ("SELECT prepaid_batch_read(%s, now(), %s, %s, %s, %s, %s)::text",
            (["d1"], ["c1"], ["d1", "d2"], ["q1", "q2"], ["r7"], []))
    write = ("SELECT prepaid_batch_write(now(), %s::jsonb)",
             ('{"ledger": [], "created": [], "changed": [["r9", "released", null, null]], "attempts": []}',))
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        plans: list[str] = []
        conn.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
        for _ in range(6):  # the generic plans of this connection are made now, on empty tables
            await conn.execute(*read)
            await conn.execute(*write)
        await conn.execute(
            "INSERT INTO accounts (account_id, prepaid) VALUES ('big', true);"
            "INSERT INTO prepaid_reservations (reservation_id, account_id, device_id, request_id, product, units, hold,"
            " state, created_at, expires_at) SELECT 'r' || i, 'big', 'd' || i, 'q' || i, 'energy', 1, 1, 'open',"
            " now(), now() + interval '1 hour' FROM generate_series(1, 3000) i")
        for setting in ("LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0",
                        "SET auto_explain.log_nested_statements = on", "SET auto_explain.log_analyze = on",
                        "SET client_min_messages = log"):
            await conn.execute(setting)
        await conn.execute(*read)
        await conn.execute(*write)
        cur = await conn.execute("SELECT state FROM prepaid_reservations WHERE reservation_id IN ('r7', 'r9') "
                                 "ORDER BY reservation_id")
        assert [r[0] for r in await cur.fetchall()] == ["open", "released"]  # the write found its row
    nested = [p for p in plans if "prepaid_reservations" in p and "Query Text: SELECT prepaid_batch" not in p]
    assert len(nested) >= 4  # the repeats, the lock, the reservations statements and the write's update
    scanned = [(line.strip(), int(float(m.group(1)))) for p in nested for line in p.splitlines()
               if "prepaid_reservations" in line and (m := re.search(r"actual time=\S+ rows=([\d.]+)", line))]
    assert scanned and all(rows <= 10 for _, rows in scanned), [s for s in scanned if s[1] > 10]  # not 3,000
