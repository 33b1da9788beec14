"""One transaction for a batch of authorize/commit/release operations, each decided exactly.

The batch's accounts are locked (in account order) before anything is decided;
operations are then applied one by one, in arrival order, to the locked states,
so each decision sees every earlier one — as if each had its own transaction —
while the whole batch costs a handful of round trips. Expired reservations of
the locked accounts are released first (lazy expiry).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

import orjson

from usagehub.core import prepaid as core
from usagehub.core.prepaid import (
    AccountState,
    AuthRequest,
    Decision,
    Denial,
    Grant,
    Reason,
    ReservationState,
    Settlement,
)
from usagehub.errors import DomainError
from usagehub.storage.ledger import LedgerRow, Locked, settle, state_of, with_states
from usagehub.storage.pool import Connection


class Pricer(Protocol):
    """Prices usage before it is debited (the rating service implements it)."""

    async def usage_charge(self, conn: Connection, *, account_id: str, product: str, quantity: Decimal,
                           at: datetime) -> Decimal:
        """The gross charge of ``quantity`` of ``product`` for the account at ``at`` (exact)."""
        ...


@dataclass(frozen=True, slots=True)
class AuthorizeOp:
    """Reserve before use."""

    request: AuthRequest


@dataclass(frozen=True, slots=True)
class CommitOp:
    """Debit the used units of a reservation and release the rest."""

    reservation_id: str
    used_units: Decimal
    device_id: str | None = None


@dataclass(frozen=True, slots=True)
class ReleaseOp:
    """Give a reservation's hold back unused."""

    reservation_id: str
    device_id: str | None = None


Op = AuthorizeOp | CommitOp | ReleaseOp
Result = Decision | Settlement


@dataclass(slots=True)
class _Res:
    reservation_id: str
    account_id: str
    device_id: str
    product: str
    units: Decimal
    hold: Decimal
    state: ReservationState
    expires_at: datetime
    used_units: Decimal | None = None
    charged: Decimal | None = None
    dirty: bool = False


def _res_of_json(row: Sequence[Any]) -> _Res:
    """A reservation from ``prepaid_batch_read`` (numbers as text, times in ISO 8601)."""
    rid, account, device, product, units, hold, state, expires, used, charged = row
    return _Res(reservation_id=rid, account_id=account, device_id=device, product=product, units=Decimal(units),
                hold=Decimal(hold), state=ReservationState(state), expires_at=datetime.fromisoformat(expires),
                used_units=None if used is None else Decimal(used),
                charged=None if charged is None else Decimal(charged))


@dataclass(slots=True)
class _Batch:
    """What one batch writes, collected while deciding."""

    conn: Connection
    pricer: Pricer
    now: datetime
    ttl: timedelta
    locked: dict[str, Locked]
    states: dict[str, AccountState]
    reservations: dict[str, _Res]
    ledger: list[LedgerRow] = field(default_factory=list)
    created: list[tuple[_Res, str | None, str | None]] = field(default_factory=list)
    attempts: list[tuple[str, str | None, str, str | None]] = field(default_factory=list)
    repeats: dict[tuple[str, str], Grant] = field(default_factory=dict)
    prices: dict[tuple[str, str, Decimal], Decimal | DomainError] = field(default_factory=dict)
    known: tuple[int, list[Any]] | None = None  # the catalogue generation and the locked accounts' rating rows
    random: bytes = b""  # drawn once per batch for its reservation ids (:meth:`new_id`)
    drawn: int = 0  # how much of ``random`` the ids took

    def new_id(self) -> str:
        """A random (version 4) UUID's hex for a reservation, from one ``os.urandom`` per batch, not per grant."""
        if self.drawn + 16 > len(self.random):
            self.random, self.drawn = os.urandom(16 * 32), 0
        chunk = bytearray(self.random[self.drawn:self.drawn + 16])
        self.drawn += 16
        chunk[6], chunk[8] = (chunk[6] & 0x0F) | 0x40, (chunk[8] & 0x3F) | 0x80  # version 4, RFC 4122 variant
        return chunk.hex()

    def write(self, account: str, plan: core.Plan, **refs: Any) -> None:
        currency = self.states[account].currency
        self.ledger += [LedgerRow(account_id=account, entry=e, currency=currency, **refs) for e in plan.entries]
        # Blocked or restored as each decision leaves it, as one transaction per request would: a later request
        # of the batch is refused ACCOUNT_BLOCKED, never granted on a blocked account (``settle`` reports it).
        self.states[account] = core.notices(self.states[account], plan.state)[0]

    async def price(self, account: str, product: str, quantity: Decimal) -> Decimal:
        """The charge of ``quantity`` now (memoised per batch: requests repeat the same quantities)."""
        if quantity == 0:
            return Decimal(0)
        key = (account, product, quantity)
        charge = self.prices.get(key)
        if charge is None:
            try:
                charge = await self.pricer.usage_charge(self.conn, account_id=account, product=product,
                                                        quantity=quantity, at=self.now)
            except DomainError as err:
                charge = err
            self.prices[key] = charge
        if isinstance(charge, DomainError):
            raise NoPrice(f"{charge.code}: {charge}") from charge
        return charge

    async def prefetch(self, keys: set[tuple[str, str, Decimal]]) -> None:
        """Price every key the batch will ask for at once, when the pricer can (else each on first use)."""
        keys = {k for k in keys if k[2] != 0 and k not in self.prices}
        many = getattr(self.pricer, "usage_charges", None)
        known = getattr(self.pricer, "usage_charges_known", None)
        if not keys or many is None:
            return
        items = sorted(keys)
        try:
            if known is not None and self.known is not None:  # read with the lock: no round trip of its own
                charges: list[Decimal | DomainError] = await known(
                    self.conn, items, at=self.now, generation=self.known[0], account_rows=self.known[1])
            else:
                charges = await many(self.conn, items, at=self.now)
        except DomainError as err:  # e.g. no VAT table at all: every item fails alike
            charges = [err] * len(items)
        self.prices.update(zip(items, charges, strict=True))


class NoPrice(Exception):
    """Rating cannot price this usage (no plan, no VAT rate...)."""


async def process(conn: Connection, ops: Sequence[Op], *, pricer: Pricer, now: datetime, ttl: timedelta,
                  expire: frozenset[str] = frozenset(), marks: list[float] | None = None) -> list[Result]:
    """Decide and write ``ops`` in the caller's transaction; results in the same order.

    ``marks`` (a bench's stage record) gets the times the read and the write returned.

    ``expire`` names more accounts whose expired reservations are released (the sweep).
    Two statements whatever the batch holds: ``prepaid_batch_read`` (reads, lock, reservations,
    rating's accounts and generation) and ``prepaid_batch_write``; a third and a fourth only when
    tiered prices need the period to date or an account's block state changes.
    """
    requests = [op.request for op in ops if isinstance(op, AuthorizeOp)]
    wanted = sorted({op.reservation_id for op in ops if not isinstance(op, AuthorizeOp)})
    keys = [(r.device_id, r.request_id) for r in requests if r.request_id]
    # One statement: the reads, the lock of every account they may name (account order), then the
    # reservations and the rating data under that lock.
    cur = await conn.execute(
        "SELECT prepaid_batch_read(%s, %s, %s, %s, %s, %s, %s)::text",
        (sorted({r.device_id for r in requests}), now, sorted({r.card_id for r in requests if r.card_id}),
         [k[0] for k in keys], [k[1] for k in keys], wanted, sorted(expire)))
    row = await cur.fetchone()
    assert row is not None
    if marks is not None:
        marks.append(time.perf_counter())
    read = orjson.loads(str(row[0]))
    devices = {str(r[0]): r[1] for r in read["devices"]}
    tenants = {str(r[0]): str(r[2]) for r in read["devices"]}
    cards = {str(r[0]): (str(r[1]), bool(r[2]), r[3], str(r[4])) for r in read["cards"]}
    repeats = {(r[0], r[1]): Grant(reservation_id=r[2], account_id=r[3], units=Decimal(r[4]), amount=Decimal(r[5]),
                                   currency=r[6], expires_at=datetime.fromisoformat(r[7])) for r in read["repeats"]}
    visible = [_visible(cards, r, tenants) for r in requests]
    targets = [_target(r, devices, v) for r, v in zip(requests, visible, strict=True)]
    locked = {str(r[0]): state_of([*r[:2], *map(Decimal, r[2:7]), *r[7:]]) for r in read["locked"]}
    batch = _Batch(conn=conn, pricer=pricer, now=now, ttl=ttl, locked=locked, states=with_states(locked),
                   reservations={}, repeats=repeats, known=(int(read["generation"]), read["accounts"]),
                   random=os.urandom(16 * len(requests)))
    before = dict(batch.states)
    for r in read["reservations"]:
        _loaded(batch, _res_of_json(r))
    await batch.prefetch(_price_keys(ops, targets, batch))
    results: list[Result] = []
    target_iter, visible_iter = iter(targets), iter(visible)
    for op in ops:
        if isinstance(op, AuthorizeOp):
            results.append(await _authorize(batch, op.request, next(target_iter), next(visible_iter)))
        elif isinstance(op, CommitOp):
            results.append(await _commit(batch, op))
        else:
            results.append(_release(batch, op))
    await _write(batch)
    await settle(conn, before, batch.states)
    if marks is not None:
        marks.append(time.perf_counter())
    return results


def _price_keys(ops: Sequence[Op], targets: list[str | Denial], batch: _Batch) -> set[tuple[str, str, Decimal]]:
    """What the batch's decisions will price: units (or one unit) of each authorization, used units of commits."""
    keys: set[tuple[str, str, Decimal]] = set()
    target_iter = iter(targets)
    for op in ops:
        if isinstance(op, AuthorizeOp):
            target, r = next(target_iter), op.request
            if isinstance(target, str) and target in batch.locked:
                keys.add((target, r.product, r.units if r.units is not None else Decimal(1)))
        elif isinstance(op, CommitOp):
            res = batch.reservations.get(op.reservation_id)
            if res is not None and op.used_units >= 0:
                keys.add((res.account_id, res.product, op.used_units))
    return keys


def _loaded(batch: _Batch, res: _Res) -> None:
    """Keep a reservation of a locked account; release it if it expired (lazy expiry, under the lock)."""
    if res.account_id not in batch.locked:
        return
    batch.reservations[res.reservation_id] = res
    if res.state is ReservationState.OPEN and core.expired(res.expires_at, batch.now):
        _expire(batch, res)


def _expire(batch: _Batch, res: _Res) -> None:
    batch.write(res.account_id, core.plan_release(batch.states[res.account_id], res.hold),
                reservation_id=res.reservation_id, device_id=res.device_id)
    res.state, res.dirty = ReservationState.EXPIRED, True


def _visible(cards: dict[str, tuple[str, bool, str | None, str]], r: AuthRequest,
             tenants: dict[str, str]) -> dict[str, tuple[str, bool, str | None, str]]:
    """The cards a request's device may present: a card of another tenant's account does not exist for it."""
    if r.card_id is None or r.card_id not in cards or cards[r.card_id][3] == tenants.get(r.device_id):
        return cards
    return {k: v for k, v in cards.items() if k != r.card_id}


def _target(r: AuthRequest, devices: dict[str, str | None],
            cards: dict[str, tuple[str, bool, str | None, str]]) -> str | Denial:
    """The account to charge, or why not (checks that need no lock)."""
    problem = core.request_problem(r)
    if problem:
        return Denial(reason=Reason.BAD_REQUEST, detail=problem)
    if r.device_id not in devices:
        return Denial(reason=Reason.UNKNOWN_DEVICE, detail=f"device {r.device_id!r} is not registered")
    if r.card_id:
        card = cards.get(r.card_id)
        if card is None:
            return Denial(reason=Reason.UNKNOWN_CARD, detail=f"card {r.card_id!r} is not registered")
        if r.account_id and r.account_id != card[0]:
            return Denial(reason=Reason.BAD_REQUEST, detail="the card belongs to another account")
        return card[0]
    bound = devices[r.device_id]
    if bound is None or (r.account_id and r.account_id != bound):
        return Denial(reason=Reason.DEVICE_NOT_BOUND,
                      detail=f"device {r.device_id!r} is not bound to {r.account_id or 'an account'} now")
    return bound


async def _authorize(batch: _Batch, r: AuthRequest, target: str | Denial,
                     cards: dict[str, tuple[str, bool, str | None, str]]) -> Decision:
    if r.request_id and (r.device_id, r.request_id) in batch.repeats:
        return batch.repeats[(r.device_id, r.request_id)]
    if r.card_id and r.card_id in cards and cards[r.card_id][1]:
        batch.attempts.append((r.card_id, cards[r.card_id][0], Reason.CARD_BLACKLISTED.value, r.device_id))
        return Denial(reason=Reason.CARD_BLACKLISTED, detail=cards[r.card_id][2] or "card is blacklisted")
    if isinstance(target, Denial):
        if target.reason is Reason.UNKNOWN_CARD and r.card_id:
            batch.attempts.append((r.card_id, None, target.reason.value, r.device_id))
        return target
    locked = batch.locked.get(target)
    if locked is None or not locked.prepaid:
        return Denial(reason=Reason.NOT_PREPAID, detail=f"account {target!r} is not a prepaid account")
    state = batch.states[target]
    try:
        if r.units is not None:
            units, cost = r.units, await batch.price(target, r.product, r.units)
        else:
            assert r.amount is not None
            cost = r.amount
            units = core.units_for_amount(cost, await batch.price(target, r.product, Decimal(1)))
    except NoPrice as err:
        return Denial(reason=Reason.NO_PRICE, detail=str(err))
    reason = core.refusal(state, cost)
    if reason is not None:
        return Denial(reason=reason, detail=f"needs {cost} {state.currency}, may spend {state.headroom}")
    res = _Res(reservation_id=batch.new_id(), account_id=target, device_id=r.device_id, product=r.product,
               units=units, hold=cost, state=ReservationState.OPEN, expires_at=batch.now + batch.ttl)
    batch.write(target, core.plan_hold(state, cost), reservation_id=res.reservation_id, device_id=r.device_id,
                card_id=r.card_id, product=r.product, quantity=units)
    batch.reservations[res.reservation_id] = res
    batch.created.append((res, r.card_id, r.request_id))
    grant = Grant(reservation_id=res.reservation_id, account_id=target, units=units, amount=cost,
                  currency=state.currency, expires_at=res.expires_at)
    if r.request_id:
        batch.repeats[(r.device_id, r.request_id)] = grant
    return grant


def _settlement(batch: _Batch, res: _Res) -> Settlement:
    released = res.hold - (res.charged or 0) if res.state is ReservationState.COMMITTED else res.hold
    return Settlement(reservation_id=res.reservation_id, state=res.state, used_units=res.used_units or Decimal(0),
                      charged=res.charged or Decimal(0), released=max(released, Decimal(0)),
                      currency=batch.states[res.account_id].currency)


def _find(batch: _Batch, rid: str, device: str | None) -> _Res | Settlement:
    res = batch.reservations.get(rid)
    if res is None or res.account_id not in batch.states or (device is not None and device != res.device_id):
        return Settlement(reservation_id=rid, state=None, reason=Reason.UNKNOWN_RESERVATION)
    if res.state is ReservationState.OPEN and core.expired(res.expires_at, batch.now):
        _expire(batch, res)
    return res


async def _commit(batch: _Batch, op: CommitOp) -> Settlement:
    found = _find(batch, op.reservation_id, op.device_id)
    if isinstance(found, Settlement):
        return found
    res = found
    if res.state in (ReservationState.OPEN, ReservationState.EXPIRED) and op.used_units >= 0:
        try:
            charge = await batch.price(res.account_id, res.product, op.used_units)
        except NoPrice:  # the plan went away since the grant: charge at the granted rate
            charge = res.hold * op.used_units / res.units if res.units else res.hold
        state = batch.states[res.account_id]
        hold = res.hold if res.state is ReservationState.OPEN else Decimal(0)  # an expired hold is back already
        batch.write(res.account_id, core.plan_commit(state, hold, charge), reservation_id=res.reservation_id,
                    device_id=res.device_id, product=res.product, quantity=op.used_units)
        res.state, res.used_units, res.charged, res.dirty = ReservationState.COMMITTED, op.used_units, charge, True
    elif op.used_units < 0:
        return Settlement(reservation_id=res.reservation_id, state=res.state, reason=Reason.BAD_REQUEST)
    return _settlement(batch, res)


def _release(batch: _Batch, op: ReleaseOp) -> Settlement:
    found = _find(batch, op.reservation_id, op.device_id)
    if isinstance(found, Settlement):
        return found
    res = found
    if res.state is ReservationState.OPEN:
        batch.write(res.account_id, core.plan_release(batch.states[res.account_id], res.hold),
                    reservation_id=res.reservation_id, device_id=res.device_id)
        res.state, res.dirty = ReservationState.RELEASED, True
    return _settlement(batch, res)


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


async def _write(batch: _Batch) -> None:
    """The batch's ledger entries, reservations and card attempts in one statement (``prepaid_batch_write``).

    One JSON parameter, numbers as exact decimal text: dumping a dozen typed arrays cost more than the
    statement itself.
    """
    created = {r.reservation_id for r, _, _ in batch.created}
    changed = [r for r in batch.reservations.values() if r.dirty and r.reservation_id not in created]
    if not (batch.ledger or batch.created or changed or batch.attempts):
        return
    doc = {
        "ledger": [[e.account_id, e.entry.kind.value, str(e.entry.amount), e.currency, e.vendor_id, e.payment_ref,
                    e.card_id, e.reservation_id, e.device_id, e.product, _text(e.quantity)] for e in batch.ledger],
        "created": [[r.reservation_id, r.account_id, r.device_id, card, req, r.product, str(r.units), str(r.hold),
                     r.state.value, r.expires_at.isoformat(), _text(r.used_units), _text(r.charged)]
                    for r, card, req in batch.created],
        "changed": [[r.reservation_id, r.state.value, _text(r.used_units), _text(r.charged)] for r in changed],
        "attempts": [list(a) for a in batch.attempts],
    }
    await batch.conn.execute("SELECT prepaid_batch_write(%s, %s::jsonb)", (batch.now, orjson.dumps(doc).decode()))
