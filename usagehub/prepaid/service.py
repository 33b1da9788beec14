"""PrepaidService: authorizations grouped into short batches, top-ups, cards, reads, expiry sweep.

``authorize``/``commit``/``release`` enqueue; one worker takes whatever has
queued while the previous transaction ran (at most ``batch_max``) and decides
it in one transaction (``storage.prepaid_batch``): low latency when idle,
few transactions under load, every decision exact.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from usagehub.adapters.prepaid_port import CommitRequest, DeviceRequest
from usagehub.core import prepaid as core
from usagehub.core.prepaid import AuthRequest, Decision, Reason, Settlement
from usagehub.errors import DomainError, IntegrityViolation, StorageError
from usagehub.storage.ledger import LedgerRow, append, lock_states, read_state, settle, with_states
from usagehub.storage.pool import Connection, mapped_errors
from usagehub.storage.prepaid_batch import AuthorizeOp, CommitOp, Op, Pricer, ReleaseOp, Result, process

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


class FlatPricer:
    """A flat gross price per unit of each product (a stand-in where no rating service is wired)."""

    def __init__(self, prices: dict[str, Decimal] | None = None, default: Decimal = Decimal(1)) -> None:
        self.prices, self.default = dict(prices or {}), default

    async def usage_charge(self, conn: Connection, *, account_id: str, product: str, quantity: Decimal,
                           at: datetime) -> Decimal:
        """``quantity`` times the product's price."""
        return quantity * self.prices.get(product, self.default)


@dataclass(frozen=True, slots=True, kw_only=True)
class TopUp:
    """A stored top-up (``repeated`` when the payment reference was seen before)."""

    entry_id: int
    account_id: str
    amount: Decimal
    currency: str
    balance_after: Decimal
    repeated: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class _Queued:
    ops: list[Op]  # decided in one transaction with whatever else queued; one future for all of them
    future: asyncio.Future[list[Result]]
    trace: list[float] | None = None  # the transaction's stage times (bench only: docs/prepaid.md, "Where it waits")


class PrepaidService:
    """Prepaid operations over one pool; safe with several hub processes on one database."""

    def __init__(self, pool: AsyncConnectionPool, pricer: Pricer, *, reservation_ttl_s: float = 300.0,
                 batch_max: int = 500, workers: int = 1, clock: Clock | None = None) -> None:
        self.pool, self.pricer = pool, pricer
        self.ttl = timedelta(seconds=reservation_ttl_s)
        self.batch_max = batch_max
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self._queue: asyncio.Queue[_Queued] | None = None
        # With workers=2 two transactions are in flight (one batch's reads overlap another's round trips); each
        # locks its accounts (sorted, one statement) before deciding, so they serialise where they share one.
        self.workers = workers
        self._workers: list[asyncio.Task[None]] = []
        self.batches = 0

    # --- authorize / commit / release (batched) ---------------------------------------------------

    async def authorize(self, request: AuthRequest) -> Decision:
        """Grant a reservation or deny with a reason."""
        result = await self._submit(AuthorizeOp(request))
        assert isinstance(result, core.Grant | core.Denial)
        return result

    async def commit(self, reservation_id: str, used_units: Decimal, *, device_id: str | None = None) -> Settlement:
        """Debit the priced used units and release the rest; a repeat returns the same settlement."""
        result = await self._submit(CommitOp(reservation_id, used_units, device_id))
        assert isinstance(result, Settlement)
        return result

    async def release(self, reservation_id: str, *, device_id: str | None = None) -> Settlement:
        """Release a reservation unused (idempotent)."""
        result = await self._submit(ReleaseOp(reservation_id, device_id))
        assert isinstance(result, Settlement)
        return result

    async def decide(self, requests: Sequence[DeviceRequest], *,
                     trace: list[float] | None = None) -> list[Decision | Settlement]:
        """Device requests decided together (with whatever else queued), in order, once committed.

        ``trace`` (a bench's stage record) gets the transaction's start, read done, write done and
        COMMIT returned (``time.perf_counter``).
        """
        if not requests:
            return []
        return await self._submit_many([_op(r) for r in requests], trace)

    async def _submit(self, op: Op) -> Result:
        (result,) = await self._submit_many([op])
        return result

    async def _submit_many(self, ops: list[Op], trace: list[float] | None = None) -> list[Result]:
        if self._queue is None:
            self._queue = asyncio.Queue()
        if len(self._workers) < self.workers or any(w.done() for w in self._workers):
            self._workers = [w for w in self._workers if not w.done()]
            self._workers += [asyncio.create_task(self._work(self._queue), name="prepaid-batches")
                              for _ in range(self.workers - len(self._workers))]
        future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Queued(ops=ops, future=future, trace=trace))
        return await future

    async def _work(self, queue: asyncio.Queue[_Queued]) -> None:
        while True:
            batch = [await queue.get()]
            size = len(batch[0].ops)
            while size < self.batch_max and not queue.empty():
                batch.append(queue.get_nowait())
                size += len(batch[-1].ops)
            # Shielded: a cancelled caller must not abort a transaction deciding for others.
            await asyncio.shield(self._run(batch))

    async def _run(self, batch: list[_Queued]) -> None:
        marks: list[float] | None = [] if any(q.trace is not None for q in batch) else None
        try:
            results = await self._transaction([op for q in batch for op in q.ops], marks=marks)
        except StorageError as err:
            if len(batch) == 1 and len(batch[0].ops) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(err)
                return
            log.warning("prepaid batch of %d failed (%s); deciding one by one", sum(len(q.ops) for q in batch), err)
            for q in batch:
                await self._one_by_one(q)
            return
        start = 0
        for q in batch:
            if q.trace is not None and marks is not None:
                q.trace.extend(marks)
            if not q.future.done():
                q.future.set_result(results[start:start + len(q.ops)])
            start += len(q.ops)

    async def _one_by_one(self, queued: _Queued) -> None:
        """Decide each op of a failed batch in its own transaction; the first failure fails the group."""
        results: list[Result] = []
        for op in queued.ops:
            single = _Queued(ops=[op], future=asyncio.get_running_loop().create_future())
            await self._run([single])
            if single.future.exception() is not None:
                if not queued.future.done():
                    queued.future.set_exception(single.future.exception())  # type: ignore[arg-type]
                return
            results += single.future.result()
        if not queued.future.done():
            queued.future.set_result(results)

    async def _transaction(self, ops: list[Op], expire: frozenset[str] = frozenset(),
                           marks: list[float] | None = None) -> list[Result]:
        # Two statements whatever the batch holds (docs/prepaid.md, "Batching"); no psycopg pipeline: with so
        # few statements its bookkeeping cost more CPU than the round trips it saved (bench: 0.61 -> 0.45 ms
        # of Python per authorization in batches of 8).
        if marks is not None:
            marks.append(time.perf_counter())
        async with mapped_errors(), self.pool.connection() as conn, conn.transaction():
            results = await process(conn, ops, pricer=self.pricer, now=self.clock(), ttl=self.ttl, expire=expire,
                                    marks=marks)
        if marks is not None:
            marks.append(time.perf_counter())
        self.batches += 1
        return results

    async def close(self) -> None:
        """Stop the batch worker (pending callers are cancelled)."""
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def sweep(self, limit: int = 200) -> int:
        """Release expired reservations (oldest accounts first); returns how many accounts were swept."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT DISTINCT account_id FROM (SELECT account_id FROM prepaid_reservations WHERE state = 'open' "
                "AND expires_at <= %s ORDER BY expires_at LIMIT %s) s", (self.clock(), limit))
            accounts = frozenset(str(r[0]) for r in await cur.fetchall())
        if accounts:
            await self._transaction([], expire=accounts)
        return len(accounts)

    # --- top-ups, cards, configuration -------------------------------------------------------------

    async def top_up(self, *, account_id: str, amount: Decimal, payment_ref: str, card_id: str | None = None,
                     vendor_id: str | None = None) -> TopUp:
        """Credit ``amount`` once per ``payment_ref``; a blacklisted card is refused and the attempt recorded."""
        if not amount.is_finite() or amount <= 0:
            raise DomainError("BAD_REQUEST", "a top-up amount must be positive")
        if not payment_ref:
            raise DomainError("BAD_REQUEST", "a top-up needs a payment reference")
        previous = await self._topup_by_ref(payment_ref)
        if previous is not None:
            return _repeat(previous, account_id, amount)
        if card_id is not None:
            await self._check_card(card_id, account_id, "topup")
        try:
            async with mapped_errors(), self.pool.connection() as conn, conn.transaction():
                return await self._credit(conn, account_id, amount, payment_ref, card_id, vendor_id)
        except IntegrityViolation:
            previous = await self._topup_by_ref(payment_ref)  # a concurrent top-up with the same reference
            if previous is None:
                raise
            return _repeat(previous, account_id, amount)

    async def _credit(self, conn: Connection, account_id: str, amount: Decimal, payment_ref: str,
                      card_id: str | None, vendor_id: str | None) -> TopUp:
        locked = await lock_states(conn, [account_id])
        if account_id not in locked or not locked[account_id].prepaid:
            raise DomainError(Reason.NOT_PREPAID.value, f"account {account_id!r} is not a prepaid account")
        before = with_states(locked)
        state = before[account_id]
        plan = core.plan_topup(state, amount)
        rows = [LedgerRow(account_id=account_id, entry=e, currency=state.currency, card_id=card_id,
                          vendor_id=vendor_id if e.kind is core.EntryKind.TOPUP else None,
                          payment_ref=payment_ref if e.kind is core.EntryKind.TOPUP else None) for e in plan.entries]
        ids = await append(conn, rows)
        await settle(conn, before, {account_id: plan.state})
        return TopUp(entry_id=ids[0], account_id=account_id, amount=amount, currency=state.currency,
                     balance_after=state.balance + amount)

    async def _topup_by_ref(self, payment_ref: str) -> TopUp | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT entry_id, account_id, amount, currency, balance_after FROM ledger_entries "
                "WHERE kind = 'topup' AND payment_ref = %s", (payment_ref,))
            row = await cur.fetchone()
        return None if row is None else TopUp(entry_id=int(row[0]), account_id=row[1], amount=row[2],
                                              currency=row[3], balance_after=row[4], repeated=True)

    async def _check_card(self, card_id: str, account_id: str, operation: str) -> None:
        async with mapped_errors(), self.pool.connection() as conn:
            cur = await conn.execute("SELECT account_id, blacklisted, reason FROM prepaid_cards WHERE card_id = %s",
                                     (card_id,))
            row = await cur.fetchone()
            reason = (Reason.UNKNOWN_CARD if row is None else Reason.CARD_BLACKLISTED if row[1]
                      else Reason.BAD_REQUEST if row[0] != account_id else None)
            if reason is None:
                return
            await conn.execute("INSERT INTO prepaid_card_attempts (card_id, account_id, operation, reason) "
                               "VALUES (%s, %s, %s, %s)", (card_id, account_id, operation, reason.value))
        detail = {Reason.UNKNOWN_CARD: "card is not registered", Reason.BAD_REQUEST: "card of another account",
                  Reason.CARD_BLACKLISTED: f"card is blacklisted: {row[2] if row else ''}"}[reason]
        raise DomainError(reason.value, detail)

    async def register_card(self, *, card_id: str, account_id: str) -> dict[str, Any]:
        """Register a payment card on an account."""
        try:
            async with mapped_errors(), self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    "INSERT INTO prepaid_cards (card_id, account_id) VALUES (%s, %s) ON CONFLICT (card_id) "
                    "DO UPDATE SET account_id = EXCLUDED.account_id WHERE prepaid_cards.account_id = "
                    "EXCLUDED.account_id RETURNING *", (card_id, account_id))
                row = await cur.fetchone()
        except IntegrityViolation as err:
            raise DomainError(Reason.UNKNOWN_ACCOUNT.value, f"account {account_id!r} does not exist") from err
        if row is None:
            raise DomainError("CARD_TAKEN", f"card {card_id!r} belongs to another account")
        return row

    async def set_blacklisted(self, card_id: str, blacklisted: bool, reason: str | None = None) -> dict[str, Any]:
        """Blacklist (with a reason) or clear a card; refused at the next presentation."""
        async with mapped_errors(), self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "UPDATE prepaid_cards SET blacklisted = %s, reason = %s, blacklisted_at = CASE WHEN %s THEN now() "
                "END WHERE card_id = %s RETURNING *", (blacklisted, reason if blacklisted else None, blacklisted,
                                                       card_id))
            row = await cur.fetchone()
        if row is None:
            raise DomainError(Reason.UNKNOWN_CARD.value, f"card {card_id!r} is not registered")
        return row

    async def configure(self, *, account_id: str, overdraft: Decimal | None = None,
                        low_threshold: Decimal | None = None, debit_mode: str | None = None) -> core.AccountState:
        """Set an account's overdraft, low-balance threshold or debit mode (metered | reservation)."""
        if overdraft is not None and overdraft < 0:
            raise DomainError("BAD_REQUEST", "the overdraft cannot be negative")
        if debit_mode is not None and debit_mode not in ("metered", "reservation"):
            raise DomainError("BAD_REQUEST", "debit mode is metered or reservation")
        async with mapped_errors(), self.pool.connection() as conn, conn.transaction():
            locked = await lock_states(conn, [account_id])
            if account_id not in locked:
                raise DomainError(Reason.NOT_PREPAID.value, f"account {account_id!r} is not a prepaid account")
            await conn.execute(
                "UPDATE prepaid_accounts SET overdraft = coalesce(%s, overdraft), low_threshold = "
                "coalesce(%s, low_threshold), debit_mode = coalesce(%s, debit_mode) WHERE account_id = %s",
                (overdraft, low_threshold, debit_mode, account_id))
            before = with_states(locked)
            after = (await lock_states(conn, [account_id]))[account_id].state
            await settle(conn, before, {account_id: after})  # a larger overdraft may unblock, a smaller block
            state = await read_state(conn, account_id)
        assert state is not None
        return state.state

    # --- reads -------------------------------------------------------------------------------------

    async def account(self, account_id: str) -> core.AccountState | None:
        """An account's prepaid state (None if it is not prepaid)."""
        async with self.pool.connection() as conn:
            locked = await read_state(conn, account_id)
        return None if locked is None else locked.state

    async def rows(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        """Rows of a read query (the GraphQL resolvers' ledger, reservations, attempts, events)."""
        async with mapped_errors(), self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql.encode(), params)
            return await cur.fetchall()


def _op(request: DeviceRequest) -> Op:
    """The batch operation of a device request."""
    if isinstance(request, AuthRequest):
        return AuthorizeOp(request)
    if isinstance(request, CommitRequest):
        return CommitOp(request.reservation_id, request.used_units, request.device_id)
    return ReleaseOp(request.reservation_id, request.device_id)


def _repeat(previous: TopUp, account_id: str, amount: Decimal) -> TopUp:
    if previous.account_id != account_id or previous.amount != amount:
        raise DomainError("DUPLICATE_PAYMENT_REF", "this payment reference was used for another top-up")
    return previous
