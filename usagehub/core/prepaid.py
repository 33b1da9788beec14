"""Prepaid decisions: grant or deny, hold/commit/release entries, debits with arrears, block and restore.

Pure: the storage layer loads an account's state under a row lock, asks these
functions what to write, and writes it. Amounts are signed the way the ledger
stores them (what an entry adds to the balance). ``balance`` is the ledger sum
(holds included), so ``balance`` is what may still be reserved or spent, down to
``-overdraft``; ``funds = balance + held`` is the money the account holds when no
reservation is open, and it decides blocking (a reservation in flight must not
cut the device that holds it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

ZERO = Decimal(0)


class Reason(StrEnum):
    """Why an authorization (or a top-up) was refused; stable codes for API and devices."""

    INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE"
    CARD_BLACKLISTED = "CARD_BLACKLISTED"
    UNKNOWN_CARD = "UNKNOWN_CARD"
    ACCOUNT_BLOCKED = "ACCOUNT_BLOCKED"
    UNKNOWN_DEVICE = "UNKNOWN_DEVICE"
    UNKNOWN_ACCOUNT = "UNKNOWN_ACCOUNT"
    NOT_PREPAID = "NOT_PREPAID"
    DEVICE_NOT_BOUND = "DEVICE_NOT_BOUND"
    UNKNOWN_RESERVATION = "UNKNOWN_RESERVATION"
    NO_PRICE = "NO_PRICE"
    BAD_REQUEST = "BAD_REQUEST"


class EntryKind(StrEnum):
    """Kinds of ledger entries (the CHECK of ``ledger_entries.kind``)."""

    TOPUP = "topup"
    USAGE = "usage"
    ADJUSTMENT = "adjustment"
    REFUND = "refund"
    HOLD = "hold"
    RELEASE = "release"


class Notice(StrEnum):
    """What an account's change tells the outside world."""

    LOW_BALANCE = "low_balance"
    BLOCKED = "blocked"
    RESTORED = "restored"


class ReservationState(StrEnum):
    """Life of a reservation; only ``open`` holds money."""

    OPEN = "open"
    COMMITTED = "committed"
    RELEASED = "released"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountState:
    """A prepaid account as locked for one decision."""

    account_id: str
    currency: str
    balance: Decimal = ZERO        # ledger sum, holds included
    held: Decimal = ZERO           # money in open reservations (>= 0)
    overdraft: Decimal = ZERO      # how far below zero ``balance`` may go (>= 0)
    low_threshold: Decimal = ZERO  # crossing it downwards raises a low-balance alert
    arrears: Decimal = ZERO        # metered usage not yet debited: it would have passed the overdraft
    blocked: bool = False

    @property
    def headroom(self) -> Decimal:
        """What may still be reserved or debited."""
        return self.balance + self.overdraft

    @property
    def funds(self) -> Decimal:
        """Balance without the open holds: what blocking and alerts look at."""
        return self.balance + self.held


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """A ledger entry to write: kind and signed amount."""

    kind: EntryKind
    amount: Decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """The entries to write and the state they lead to."""

    entries: tuple[Entry, ...]
    state: AccountState


def apply(state: AccountState, entry: Entry) -> AccountState:
    """The state after ``entry`` (what the ledger trigger computes too)."""
    held = state.held
    if entry.kind in (EntryKind.HOLD, EntryKind.RELEASE):  # a hold (negative) adds to held, a release takes
        held -= entry.amount
    # Built directly: dataclasses.replace walks the fields by introspection, several times the cost, and a
    # batch applies an entry per decision (docs/prepaid.md, "p24").
    return AccountState(account_id=state.account_id, currency=state.currency, balance=state.balance + entry.amount,
                        held=held, overdraft=state.overdraft, low_threshold=state.low_threshold,
                        arrears=state.arrears, blocked=state.blocked)


def _plan(state: AccountState, entries: list[Entry]) -> Plan:
    for entry in entries:
        state = apply(state, entry)
    return Plan(entries=tuple(entries), state=state)


def refusal(state: AccountState, cost: Decimal) -> Reason | None:
    """Why a hold of ``cost`` cannot be granted now, or None."""
    if state.blocked:
        return Reason.ACCOUNT_BLOCKED
    if cost > state.headroom:
        return Reason.INSUFFICIENT_BALANCE
    return None


def plan_hold(state: AccountState, cost: Decimal) -> Plan:
    """Reserve ``cost`` (the caller checked :func:`refusal`); a zero cost writes nothing."""
    return _plan(state, [Entry(kind=EntryKind.HOLD, amount=-cost)] if cost > 0 else [])


def plan_release(state: AccountState, hold: Decimal) -> Plan:
    """Give a reservation's hold back."""
    return _plan(state, [Entry(kind=EntryKind.RELEASE, amount=hold)] if hold > 0 else [])


def plan_debit(state: AccountState, charge: Decimal) -> Plan:
    """Debit a usage charge down to ``-overdraft``; the rest becomes arrears. A credit pays arrears first."""
    if charge >= 0:
        debit = min(charge, max(state.headroom, ZERO))
        plan = _plan(state, [Entry(kind=EntryKind.USAGE, amount=-debit)] if debit > 0 else [])
        return Plan(entries=plan.entries, state=replace(plan.state, arrears=state.arrears + charge - debit))
    credit = -charge
    forgiven = min(credit, state.arrears)
    rest = credit - forgiven
    plan = _plan(state, [Entry(kind=EntryKind.USAGE, amount=rest)] if rest > 0 else [])
    return Plan(entries=plan.entries, state=replace(plan.state, arrears=state.arrears - forgiven))


def plan_commit(state: AccountState, hold: Decimal, charge: Decimal) -> Plan:
    """Release the hold, then debit the priced actual usage (more than held is debited as far as allowed)."""
    released = plan_release(state, hold)
    debited = plan_debit(released.state, charge)
    return Plan(entries=released.entries + debited.entries, state=debited.state)


def plan_topup(state: AccountState, amount: Decimal) -> Plan:
    """Credit a top-up, then collect arrears from it as far as the overdraft allows."""
    credited = _plan(state, [Entry(kind=EntryKind.TOPUP, amount=amount)])
    owed = credited.state.arrears
    if owed <= 0:
        return credited
    collected = plan_debit(replace(credited.state, arrears=ZERO), owed)
    return Plan(entries=credited.entries + collected.entries, state=collected.state)


def exhausted(state: AccountState) -> bool:
    """The account spent its funds and its overdraft (or owes usage it could not pay)."""
    return state.funds <= -state.overdraft or state.arrears > 0


def restorable(state: AccountState) -> bool:
    """A blocked account is restored once its funds are positive again and nothing is owed."""
    return state.funds > 0 and state.arrears == 0


def notices(before: AccountState, after: AccountState) -> tuple[AccountState, list[Notice]]:
    """The final state (``blocked`` updated) and what changed: low-balance crossing, block, restore."""
    out: list[Notice] = []
    if before.funds > before.low_threshold >= after.funds:
        out.append(Notice.LOW_BALANCE)
    blocked = after.blocked
    if not blocked and exhausted(after):
        blocked = True
        out.append(Notice.BLOCKED)
    elif blocked and restorable(after):
        blocked = False
        out.append(Notice.RESTORED)
    return (after if blocked == after.blocked else replace(after, blocked=blocked)), out


def expired(expires_at: datetime, now: datetime) -> bool:
    """Whether a reservation expiring at ``expires_at`` has expired at ``now``."""
    return expires_at <= now


def units_for_amount(amount: Decimal, unit_price: Decimal) -> Decimal:
    """Units an amount buys at a unit price (rounded down to 1/1000 unit); 0 price buys nothing."""
    if unit_price <= 0:
        return ZERO
    return (amount / unit_price).quantize(Decimal("0.001"), rounding="ROUND_DOWN")


# --- requests and answers (shared by the API, the device-side adapters and storage) -------------

@dataclass(frozen=True, slots=True, kw_only=True)
class AuthRequest:
    """Ask to reserve ``units`` (or money ``amount``) of ``product`` for ``device_id``.

    The account is named, or found from the card, or from the device's binding.
    ``request_id`` makes a repeated request (a redelivery) return the same grant.
    """

    device_id: str
    account_id: str | None = None
    card_id: str | None = None
    units: Decimal | None = None
    amount: Decimal | None = None
    product: str = "energy"
    request_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """A reservation: ``units`` may be used until ``expires_at``; ``amount`` is held."""

    reservation_id: str
    account_id: str
    units: Decimal
    amount: Decimal
    currency: str
    expires_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Denial:
    """A refused authorization and why."""

    reason: Reason
    detail: str = ""


Decision = Grant | Denial


@dataclass(frozen=True, slots=True, kw_only=True)
class Settlement:
    """The state of a reservation after commit or release (repeats return the same)."""

    reservation_id: str
    state: ReservationState | None  # None: no such reservation (see ``reason``)
    used_units: Decimal = ZERO
    charged: Decimal = ZERO
    released: Decimal = ZERO
    currency: str = ""
    reason: Reason | None = None  # set when the reservation is unknown (or not the device's)


def request_problem(request: AuthRequest) -> str | None:
    """What is malformed in ``request`` (exactly one of units/amount, positive), or None."""
    if (request.units is None) == (request.amount is None):
        return "give exactly one of units or amount"
    value = request.units if request.units is not None else request.amount
    if value is None or not value.is_finite() or value <= 0:
        return "units/amount must be a positive number"
    if not request.device_id:
        return "device id missing"
    return None
