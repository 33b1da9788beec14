"""The ledger applied per statement (migration 0035): one account update per statement, every entry checked."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from usagehub.core.prepaid import Entry, EntryKind
from usagehub.prepaid.service import FlatPricer, PrepaidService
from usagehub.storage.ledger import LedgerRow, append, ledger_sum, lock_states
from usagehub.storage.registry import Registry

INSERT = "INSERT INTO ledger_entries (account_id, kind, amount, currency, balance_after) VALUES (%s, %s, %s, 'EUR', %s)"


async def accounts(pool: AsyncConnectionPool, *names: str) -> PrepaidService:
    reg = Registry(pool)
    for name in names:
        await reg.upsert_account(account_id=name, prepaid=True)
    return PrepaidService(pool, FlatPricer({}))


async def state(pool: AsyncConnectionPool, account: str) -> tuple[Decimal, Decimal, Decimal]:
    """(balance, held, ledger sum)."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT balance, held FROM prepaid_accounts WHERE account_id = %s", (account,))
        row = await cur.fetchone()
        assert row is not None
        return Decimal(row[0]), Decimal(row[1]), await ledger_sum(conn, account)


async def chain(pool: AsyncConnectionPool, account: str) -> list[tuple[str, Decimal, Decimal, bool]]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT kind, amount, balance_after, per_entry FROM ledger_entries "
                                 "WHERE account_id = %s ORDER BY entry_id", (account,))
        return list(await cur.fetchall())


def row(account: str, kind: EntryKind, amount: str) -> LedgerRow:
    return LedgerRow(account_id=account, entry=Entry(kind=kind, amount=Decimal(amount)), currency="EUR")


async def test_one_statement_over_two_accounts_keeps_exact_running_balances(pool: AsyncConnectionPool) -> None:
    svc = await accounts(pool, "s1", "s2")
    try:
        await svc.top_up(account_id="s1", amount=Decimal("10.00"), payment_ref="st-1")
        async with pool.connection() as conn, conn.transaction():
            await lock_states(conn, ["s1", "s2"])
            ids = await append(conn, [row("s1", EntryKind.HOLD, "-4.10"), row("s2", EntryKind.TOPUP, "3"),
                                      row("s1", EntryKind.RELEASE, "4.10"), row("s1", EntryKind.USAGE, "-2.05"),
                                      row("s2", EntryKind.HOLD, "-1.5"), row("s1", EntryKind.HOLD, "-7.95")])
        assert ids == sorted(ids) and len(ids) == 6
        assert await chain(pool, "s1") == [("topup", Decimal("10.00"), Decimal("10.00"), False),
                                           ("hold", Decimal("-4.10"), Decimal("5.90"), False),
                                           ("release", Decimal("4.10"), Decimal("10.00"), False),
                                           ("usage", Decimal("-2.05"), Decimal("7.95"), False),
                                           ("hold", Decimal("-7.95"), Decimal("0.00"), False)]
        assert await state(pool, "s1") == (Decimal(0), Decimal("7.95"), Decimal(0))
        assert await state(pool, "s2") == (Decimal("1.5"), Decimal("1.5"), Decimal("1.5"))
    finally:
        await svc.close()


async def test_the_statement_is_refused_whole_when_an_entry_goes_below_the_overdraft(
        pool: AsyncConnectionPool) -> None:
    svc = await accounts(pool, "s1", "s2")
    try:
        await svc.configure(account_id="s1", overdraft=Decimal(1))
        await svc.top_up(account_id="s1", amount=Decimal(2), payment_ref="st-2")
        await svc.top_up(account_id="s2", amount=Decimal(2), payment_ref="st-3")
        async with pool.connection() as conn:
            with pytest.raises(psycopg.errors.CheckViolation, match=r"INSUFFICIENT_BALANCE: usage -0\.01 .* s1"):
                async with conn.transaction():
                    await lock_states(conn, ["s1", "s2"])
                    # the top-up after it does not excuse it: each entry is checked at its place
                    await append(conn, [row("s2", EntryKind.USAGE, "-1"), row("s1", EntryKind.USAGE, "-3"),
                                        row("s1", EntryKind.USAGE, "-0.01"), row("s1", EntryKind.TOPUP, "5")])
            async with conn.transaction():  # down to exactly -overdraft is allowed
                await lock_states(conn, ["s1"])
                await append(conn, [row("s1", EntryKind.USAGE, "-3")])
        assert await state(pool, "s1") == (Decimal(-1), Decimal(0), Decimal(-1))
        assert await state(pool, "s2") == (Decimal(2), Decimal(0), Decimal(2))
    finally:
        await svc.close()


async def test_a_writer_cannot_claim_a_balance_it_does_not_have(pool: AsyncConnectionPool) -> None:
    """A supplied balance_after is checked against the running balance; the per-entry mark is the trigger's."""
    svc = await accounts(pool, "s1")
    try:
        await svc.top_up(account_id="s1", amount=Decimal(5), payment_ref="st-4")
        async with pool.connection() as conn:
            for args, error, message in (
                    (("s1", "topup", 1, 5), psycopg.errors.CheckViolation, "running balance is 6"),  # not applied
                    (("s1", "usage", -1, 9), psycopg.errors.CheckViolation, "running balance is 4"),
                    (("s1", "usage", -6, -1), psycopg.errors.CheckViolation, "INSUFFICIENT_BALANCE"),
                    (("nobody", "topup", 1, 1), psycopg.errors.ForeignKeyViolation, "prepaid_accounts")):
                with pytest.raises(error, match=message):
                    await conn.execute(INSERT, args)
                await conn.rollback()
            with pytest.raises(psycopg.errors.CheckViolation, match="per_entry is set by the ledger"):
                await conn.execute("INSERT INTO ledger_entries (account_id, kind, amount, currency, balance_after, "
                                   "per_entry) VALUES ('s1', 'topup', 1, 'EUR', 6, true)")
            await conn.rollback()
            cur = await conn.execute(INSERT + " RETURNING balance_after, per_entry", ("s1", "usage", -1, 4))
            assert await cur.fetchone() == (Decimal(4), False)
            cur = await conn.execute("INSERT INTO ledger_entries (account_id, kind, amount, currency) "
                                     "VALUES ('s1', 'usage', -1, 'EUR') RETURNING balance_after, per_entry")
            assert await cur.fetchone() == (Decimal(3), True)  # no balance_after: applied entry by entry, as 0028
            await conn.commit()
        assert await state(pool, "s1") == (Decimal(3), Decimal(0), Decimal(3))
    finally:
        await svc.close()


async def test_concurrent_statements_never_overspend_and_a_stale_writer_is_refused(
        pool: AsyncConnectionPool, database_url: str) -> None:
    """Writers on two pools append multi-entry statements at once; the database refuses what would overspend."""
    from usagehub.storage.pool import open_pool

    svc = await accounts(pool, "s1", "s2")
    other = await open_pool(database_url, min_size=1, max_size=4)
    try:
        for name in ("s1", "s2"):
            await svc.configure(account_id=name, overdraft=Decimal("0.50"))
            await svc.top_up(account_id=name, amount=Decimal(20), payment_ref=f"st-c-{name}")
        rng = random.Random(14)
        plans = [[row(rng.choice(["s1", "s2"]), EntryKind.USAGE, f"-{rng.randint(1, 90) / 100:.2f}")
                  for _ in range(rng.randint(1, 6))] for _ in range(60)]
        outcomes: list[str] = []

        async def writer(i: int, rows: list[LedgerRow]) -> None:
            async with (pool if i % 2 else other).connection() as conn:
                try:
                    async with conn.transaction():
                        await lock_states(conn, {r.account_id for r in rows})
                        await append(conn, rows)
                    outcomes.append("ok")
                except psycopg.errors.CheckViolation as err:
                    assert "INSUFFICIENT_BALANCE" in str(err)
                    outcomes.append("refused")

        await asyncio.gather(*(writer(i, rows) for i, rows in enumerate(plans)))
        assert "ok" in outcomes and "refused" in outcomes
        for name in ("s1", "s2"):
            balance, held, total = await state(pool, name)
            assert balance == total >= Decimal("-0.50") and held == 0
            entries = await chain(pool, name)
            running = Decimal(0)
            for _, amount, after, _ in entries:  # entry order is lock order: the chain holds entry by entry
                running += amount
                assert after == running
        async with other.connection() as stale:  # read without the lock, then someone else spends first
            cur = await stale.execute("SELECT balance FROM prepaid_accounts WHERE account_id = 's1'")
            seen = (await cur.fetchone())[0]  # type: ignore[index]
            async with pool.connection() as conn, conn.transaction():
                await lock_states(conn, ["s1"])
                await append(conn, [row("s1", EntryKind.TOPUP, "1")])
            with pytest.raises(psycopg.errors.CheckViolation, match="running balance"):
                await stale.execute(INSERT, ("s1", "topup", 1, seen + 1))
            await stale.rollback()
        balance, _, total = await state(pool, "s1")
        assert balance == total
    finally:
        await svc.close()
        await other.close()
