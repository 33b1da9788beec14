"""Ledger SQL: lock prepaid accounts, append entries, save block state and emit prepaid events.

Every write path (authorization batches, top-ups, continuous debit, expiry sweep)
locks the accounts' rows first, in account order (no deadlocks between hub
processes), decides with ``core.prepaid`` and then appends here; the ledger
trigger re-checks the overdraft and keeps the balance, so a bug above cannot
spend money the account does not have.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg import AsyncCursor

from usagehub.core.prepaid import AccountState, Entry, Notice, notices
from usagehub.storage.pool import Connection

_STATE_COLUMNS = ("pa.account_id, pa.currency, pa.balance, pa.held, pa.overdraft, pa.low_threshold, pa.arrears, "
                  "pa.blocked, pa.debit_mode, a.prepaid")


@dataclass(frozen=True, slots=True, kw_only=True)
class Locked:
    """An account's state as locked, with how its metered usage is debited."""

    state: AccountState
    debit_mode: str
    prepaid: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerRow:
    """One entry to append, with its references."""

    account_id: str
    entry: Entry
    currency: str
    card_id: str | None = None
    vendor_id: str | None = None
    payment_ref: str | None = None
    reservation_id: str | None = None
    device_id: str | None = None
    product: str | None = None
    quantity: Decimal | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PrepaidEvent:
    """A stored alert or block/restore event."""

    event_id: int
    account_id: str
    kind: str
    balance: Decimal
    funds: Decimal
    currency: str
    at: datetime


def state_of(row: Sequence[Any]) -> Locked:
    """A :class:`Locked` from a row selected with ``_STATE_COLUMNS``."""
    account, currency, balance, held, overdraft, low, arrears, blocked, mode, prepaid = row
    state = AccountState(account_id=account, currency=currency, balance=balance, held=held, overdraft=overdraft,
                         low_threshold=low, arrears=arrears, blocked=blocked)
    return Locked(state=state, debit_mode=str(mode), prepaid=bool(prepaid))


async def lock_states(conn: Connection, accounts: Iterable[str]) -> dict[str, Locked]:
    """Lock the prepaid rows of ``accounts`` (in account order) and return their states."""
    return await read_locked(await send_lock(conn, accounts))


async def send_lock(conn: Connection, accounts: Iterable[str]) -> AsyncCursor[Any] | None:
    """Send the lock of :func:`lock_states` (read it with :func:`read_locked`; in a pipeline, later)."""
    names = sorted(set(accounts))
    if not names:
        return None
    return await conn.execute(
        f"SELECT {_STATE_COLUMNS} FROM prepaid_accounts pa JOIN accounts a USING (account_id) "
        "WHERE pa.account_id = ANY(%s) ORDER BY pa.account_id FOR UPDATE OF pa", (names,))


async def read_locked(cur: AsyncCursor[Any] | None) -> dict[str, Locked]:
    """The states a :func:`send_lock` locked."""
    return {} if cur is None else {str(r[0]): state_of(r) for r in _rows(await cur.fetchall())}


async def read_state(conn: Connection, account: str) -> Locked | None:
    """An account's state without locking it."""
    cur = await conn.execute(
        f"SELECT {_STATE_COLUMNS} FROM prepaid_accounts pa JOIN accounts a USING (account_id) "
        "WHERE pa.account_id = %s", (account,))
    row = await cur.fetchone()
    return state_of(row) if row else None


async def append(conn: Connection, rows: Sequence[LedgerRow], *, returning: bool = True) -> list[int]:
    """Append entries in order (one statement); the ledger triggers check and apply them. Returns entry ids.

    Each entry carries its ``balance_after`` (the account's balance plus the running sum, in order), so
    the ledger applies the statement with one account update each (migration 0035); the caller holds
    the accounts' locks (:func:`lock_states`), else a concurrent entry makes the check refuse the statement.
    ``returning=False`` reads nothing back (an empty list), so a pipeline need not wait for it.
    """
    if not rows:
        return []
    columns = [
        [r.account_id for r in rows], [r.entry.kind.value for r in rows], [r.entry.amount for r in rows],
        [r.currency for r in rows], [r.vendor_id for r in rows], [r.payment_ref for r in rows],
        [r.card_id for r in rows], [r.reservation_id for r in rows], [r.device_id for r in rows],
        [r.product for r in rows], [r.quantity for r in rows],
    ]
    cur = await conn.execute(
        "INSERT INTO ledger_entries (account_id, kind, amount, currency, vendor_id, payment_ref, card_id, "
        "reservation_id, device_id, product, quantity, balance_after) "
        "SELECT a, k, m, c, v, p, cd, r, d, pr, q, pa.balance + sum(m) OVER (PARTITION BY a ORDER BY n) "
        "FROM unnest(%b::text[], %b::text[], %b::numeric[], %b::text[], "
        "%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::numeric[]) "
        "WITH ORDINALITY AS u(a, k, m, c, v, p, cd, r, d, pr, q, n) "
        "LEFT JOIN prepaid_accounts pa ON pa.account_id = u.a ORDER BY n"
        + (" RETURNING entry_id" if returning else ""), columns)
    return [int(r[0]) for r in _rows(await cur.fetchall())] if returning else []


def _moved(old: AccountState, new: AccountState) -> tuple[AccountState, list[Notice]]:
    """The notices of a state whose block was already moved decision by decision (a device batch)."""
    crossed = [n for n in notices(old, replace(new, blocked=old.blocked))[1] if n is Notice.LOW_BALANCE]
    return new, [*crossed, Notice.BLOCKED if new.blocked else Notice.RESTORED]


async def settle(conn: Connection, before: dict[str, AccountState],
                 after: dict[str, AccountState]) -> list[tuple[str, Notice, AccountState]]:
    """Save arrears and block state of changed accounts and record their alerts/events (NOTIFY at commit)."""
    changed: list[AccountState] = []
    events: list[tuple[str, Notice, AccountState]] = []
    for account, new in after.items():
        old = before[account]
        final, found = notices(old, new) if new.blocked == old.blocked else _moved(old, new)
        if final.arrears != old.arrears or final.blocked != old.blocked:
            changed.append(final)
        events += [(account, n, final) for n in found]
    if changed:
        await conn.execute(
            "UPDATE prepaid_accounts pa SET arrears = u.arrears, blocked = u.blocked, "
            "blocked_at = CASE WHEN u.blocked AND NOT pa.blocked THEN now() WHEN u.blocked THEN pa.blocked_at END "
            "FROM unnest(%b::text[], %b::numeric[], %b::bool[]) AS u(account_id, arrears, blocked) "
            "WHERE pa.account_id = u.account_id",
            ([s.account_id for s in changed], [s.arrears for s in changed], [s.blocked for s in changed]))
    if events:
        await conn.execute(
            "INSERT INTO prepaid_events (account_id, kind, balance, funds, currency) "
            "SELECT * FROM unnest(%b::text[], %b::text[], %b::numeric[], %b::numeric[], %b::text[])",
            ([a for a, _, _ in events], [n.value for _, n, _ in events], [s.balance for _, _, s in events],
             [s.funds for _, _, s in events], [s.currency for _, _, s in events]))
    return events


def with_states(locked: dict[str, Locked]) -> dict[str, AccountState]:
    """The plain states of locked accounts (a dict to update while planning; the states are frozen)."""
    return {k: v.state for k, v in locked.items()}


async def ledger_sum(conn: Connection, account: str) -> Decimal:
    """The sum of an account's ledger entries (equals its balance; checked by tests and audits)."""
    cur = await conn.execute("SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE account_id = %s",
                             (account,))
    row = await cur.fetchone()
    assert row is not None
    return Decimal(str(row[0]))


def _rows(rows: Sequence[Any]) -> list[Any]:
    """Fetched rows, typed loosely for unpacking (psycopg types them as tuples of object)."""
    return list(rows)
