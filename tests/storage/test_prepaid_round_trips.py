"""A batch's BEGIN travels with its read and its COMMIT with its write: a failed batch still ends cleanly."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from decimal import Decimal

import pytest
from psycopg_pool import AsyncConnectionPool

from usagehub.core.prepaid import AuthRequest, Grant
from usagehub.prepaid.service import PrepaidService
from usagehub.storage.pool import Connection
from usagehub.storage.registry import Registry

from .test_prepaid import PRICES, Clock, balance, setup_accounts


class RacingPricer:
    """Prices flat; on its first call another connection commits a reservation with the batch's request id."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool, self.raced = pool, False

    async def usage_charge(self, conn: Connection, *, account_id: str, product: str, quantity: Decimal,
                           at: datetime) -> Decimal:
        if not self.raced:  # between the batch's read and its write: its write will hit the unique index
            self.raced = True
            async with self.pool.connection() as other:
                await other.execute(
                    "INSERT INTO prepaid_reservations (reservation_id, account_id, device_id, request_id, product, "
                    "units, hold, state, created_at, expires_at) VALUES ('raced', 'p3', 'm1', 'q1', 'energy', 1, "
                    "0.25, 'open', %s, %s + interval '1 hour')", (at, at))
        return quantity * PRICES[product]


async def test_a_batch_whose_write_fails_rolls_back_and_is_decided_one_by_one(
        pool: AsyncConnectionPool, caplog: pytest.LogCaptureFixture) -> None:
    await setup_accounts(pool)
    await Registry(pool).upsert_account(account_id="p3", prepaid=True)  # not in the batch: its row is not locked
    svc = PrepaidService(pool, RacingPricer(pool), clock=Clock())
    try:
        await svc.top_up(account_id="p1", amount=Decimal(10), payment_ref="rt-1")
        await svc.top_up(account_id="p2", amount=Decimal(10), payment_ref="rt-2")
        with caplog.at_level(logging.WARNING):
            async with asyncio.timeout(30):
                first, second = await svc.decide([AuthRequest(device_id="m1", units=Decimal(4), request_id="q1"),
                                                  AuthRequest(device_id="m2", units=Decimal(2), request_id="q2")])
        # the failed batch wrote nothing; alone, q1 is the reservation that won the race and q2 is granted
        assert isinstance(first, Grant) and first.reservation_id == "raced" and first.account_id == "p3"
        assert isinstance(second, Grant) and second.amount == Decimal("0.50")
        assert "deciding one by one" in caplog.text
        assert "rolling back" not in caplog.text  # the service ended its transaction, not the pool
        assert await balance(pool, "p1") == (Decimal(10), Decimal(0), Decimal(10))
        assert await balance(pool, "p2") == (Decimal("9.50"), Decimal("0.50"), Decimal("9.50"))
        async with pool.connection() as conn:  # every connection came back idle and usable
            cur = await conn.execute("SELECT count(*) FROM prepaid_reservations")
            assert await cur.fetchone() == (2,)
        third = await svc.authorize(AuthRequest(device_id="m1", units=Decimal(1), request_id="q3"))
        assert isinstance(third, Grant) and await balance(pool, "p1") == (Decimal("9.75"), Decimal("0.25"),
                                                                           Decimal("9.75"))
    finally:
        await svc.close()
