"""Prepaid balances, cards, authorizations and block events (issue 5)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime
from decimal import Decimal
from typing import Any

import strawberry
from strawberry.types import Info

from usagehub.core.prepaid import AccountState, AuthRequest, Decision, Grant, Settlement
from usagehub.errors import DomainError
from usagehub.graphql.auth import api_error, domain_errors, own, require, require_personal
from usagehub.graphql.pagination import Connection, connection, decode_cursor, page_size

PAY = ("admin", "billing")                    # top-ups, cards, configuration
AUTHORIZE = ("admin", "billing", "operator")  # authorize / commit / release on behalf of devices


def _svc(info: Info) -> Any:
    service = info.context.services.prepaid
    if service is None:
        raise api_error("UNAVAILABLE", "prepaid is not enabled on this hub")
    return service


@strawberry.type
class LedgerEntry:
    """An append-only ledger entry; ``amount`` is what it added to the balance."""

    id: strawberry.ID
    kind: str
    amount: Decimal
    currency: str
    balance_after: Decimal
    created_at: datetime
    vendor_id: str | None
    payment_ref: str | None
    card_id: str | None
    reservation_id: str | None
    device_id: str | None
    product: str | None
    quantity: Decimal | None


@strawberry.type
class PrepaidAccount:
    """A prepaid balance: ``balance`` is the ledger sum (open holds included), ``funds`` excludes holds."""

    account_id: str
    currency: str
    balance: Decimal
    held: Decimal
    funds: Decimal
    overdraft: Decimal
    low_balance_threshold: Decimal
    arrears: Decimal
    blocked: bool

    @classmethod
    def of(cls, s: AccountState) -> PrepaidAccount:
        """From a core state."""
        return cls(account_id=s.account_id, currency=s.currency, balance=s.balance, held=s.held, funds=s.funds,
                   overdraft=s.overdraft, low_balance_threshold=s.low_threshold, arrears=s.arrears,
                   blocked=s.blocked)

    @strawberry.field(description="Ledger entries, newest first.")
    async def ledger(self, info: Info, first: int = 50, after: str | None = None) -> Connection[LedgerEntry]:
        n = page_size(first)
        pos = decode_cursor(after)
        rows = await _svc(info).rows(
            "SELECT entry_id, kind, amount, currency, balance_after, created_at, vendor_id, payment_ref, card_id, "
            "reservation_id, device_id, product, quantity FROM ledger_entries WHERE account_id = %s "
            "AND entry_id < %s ORDER BY entry_id DESC LIMIT %s",
            (self.account_id, int(str(pos)) if pos else 2**62, n + 1))
        nodes = [LedgerEntry(id=strawberry.ID(str(r.pop("entry_id"))), **r) for r in rows]
        return connection(nodes, n, lambda e: int(e.id))


@strawberry.type
class Authorization:
    """A grant (reservation) or a denial with its reason code."""

    granted: bool
    reservation_id: str | None = None
    account_id: str | None = None
    units: Decimal | None = None
    amount: Decimal | None = None
    currency: str | None = None
    expires_at: datetime | None = None
    reason: str | None = None
    detail: str | None = None

    @classmethod
    def of(cls, d: Decision) -> Authorization:
        """From a core decision."""
        if isinstance(d, Grant):
            return cls(granted=True, reservation_id=d.reservation_id, account_id=d.account_id, units=d.units,
                       amount=d.amount, currency=d.currency, expires_at=d.expires_at)
        return cls(granted=False, reason=d.reason.value, detail=d.detail)


@strawberry.type
class ReservationResult:
    """A reservation after commit or release; ``reason`` is set when it is unknown."""

    reservation_id: str
    state: str | None
    used_units: Decimal
    charged: Decimal
    released: Decimal
    currency: str
    reason: str | None

    @classmethod
    def of(cls, s: Settlement) -> ReservationResult:
        """From a core settlement."""
        return cls(reservation_id=s.reservation_id, state=s.state.value if s.state else None,
                   used_units=s.used_units, charged=s.charged, released=s.released, currency=s.currency,
                   reason=s.reason.value if s.reason else None)


@strawberry.type
class TopUpResult:
    """A stored top-up; ``repeated`` when its payment reference was seen before."""

    entry_id: strawberry.ID
    account_id: str
    amount: Decimal
    currency: str
    balance_after: Decimal
    repeated: bool


@strawberry.type
class PaymentCard:
    """A payment card of an account."""

    card_id: str
    account_id: str
    blacklisted: bool
    reason: str | None

    @classmethod
    def of(cls, row: dict[str, Any]) -> PaymentCard:
        """From a card row."""
        return cls(card_id=row["card_id"], account_id=row["account_id"], blacklisted=row["blacklisted"],
                   reason=row["reason"])


@strawberry.type
class CardAttempt:
    """A refused presentation of a card."""

    card_id: str
    account_id: str | None
    operation: str
    reason: str
    device_id: str | None
    at: datetime


@strawberry.type
class PrepaidEvent:
    """A low-balance alert, a block or a restore."""

    id: strawberry.ID
    account_id: str
    kind: str
    balance: Decimal
    funds: Decimal
    currency: str
    at: datetime


@strawberry.type
class PrepaidQuery:
    """Prepaid reads."""

    @strawberry.field(description="An account's prepaid balance (null when the account is not prepaid).")
    async def prepaid_account(self, info: Info, account_id: str) -> PrepaidAccount | None:
        tenant = await require_personal(info)
        await own(info, tenant, "account", account_id)
        state = await _svc(info).account(account_id)
        return PrepaidAccount.of(state) if state else None

    @strawberry.field(description="Refused card presentations (blacklisted, unknown), newest first.")
    async def card_attempts(self, info: Info, card_id: str, first: int = 50) -> list[CardAttempt]:
        tenant = require(info, "admin", "billing", "operator")
        rows = await info.context.services.reads.card_attempts(tenant=tenant, card_id=card_id,
                                                               limit=page_size(first))
        return [CardAttempt(**r) for r in rows]

    @strawberry.field(description="Alerts and block/restore events of an account, newest first.")
    async def prepaid_events(self, info: Info, account_id: str, first: int = 50) -> list[PrepaidEvent]:
        tenant = await require_personal(info)
        await own(info, tenant, "account", account_id)
        rows = await _svc(info).rows(
            "SELECT event_id, account_id, kind, balance, funds, currency, at FROM prepaid_events "
            "WHERE account_id = %s ORDER BY event_id DESC LIMIT %s", (account_id, page_size(first)))
        return [PrepaidEvent(id=strawberry.ID(str(r.pop("event_id"))), **r) for r in rows]


@strawberry.type
class PrepaidMutation:
    """Prepaid changes."""

    @strawberry.mutation(description="Credit an account once per payment reference.")
    async def top_up(self, info: Info, account_id: str, amount: Decimal, payment_ref: str,
                     card_id: str | None = None, vendor_id: str | None = None) -> TopUpResult:
        tenant = require(info, *PAY)
        await own(info, tenant, "account", account_id)
        await own(info, tenant, "card", card_id)
        with domain_errors():
            t = await _svc(info).top_up(account_id=account_id, amount=amount, payment_ref=payment_ref,
                                        card_id=card_id, vendor_id=vendor_id)
        return TopUpResult(entry_id=strawberry.ID(str(t.entry_id)), account_id=t.account_id, amount=t.amount,
                           currency=t.currency, balance_after=t.balance_after, repeated=t.repeated)

    @strawberry.mutation(description="Set overdraft, low-balance threshold or debit mode (metered|reservation).")
    async def configure_prepaid(self, info: Info, account_id: str, overdraft: Decimal | None = None,
                                low_balance_threshold: Decimal | None = None,
                                debit_mode: str | None = None) -> PrepaidAccount:
        tenant = require(info, *PAY)
        await own(info, tenant, "account", account_id)
        with domain_errors():
            state = await _svc(info).configure(account_id=account_id, overdraft=overdraft,
                                               low_threshold=low_balance_threshold, debit_mode=debit_mode)
        return PrepaidAccount.of(state)

    @strawberry.mutation
    async def register_card(self, info: Info, card_id: str, account_id: str) -> PaymentCard:
        tenant = require(info, *PAY)
        await own(info, tenant, "account", account_id)
        with domain_errors():
            return PaymentCard.of(await _svc(info).register_card(card_id=card_id, account_id=account_id))

    @strawberry.mutation(description="Refuse a card from now on, with a reason.")
    async def blacklist_card(self, info: Info, card_id: str, reason: str) -> PaymentCard:
        tenant = require(info, *AUTHORIZE)
        await own(info, tenant, "card", card_id)
        with domain_errors():
            return PaymentCard.of(await _svc(info).set_blacklisted(card_id, True, reason))

    @strawberry.mutation
    async def unblacklist_card(self, info: Info, card_id: str) -> PaymentCard:
        tenant = require(info, *PAY)
        await own(info, tenant, "card", card_id)
        with domain_errors():
            return PaymentCard.of(await _svc(info).set_blacklisted(card_id, False))

    @strawberry.mutation(description="Reserve units (or an amount) before use; a denial carries its reason.")
    async def authorize(self, info: Info, device_id: str, account_id: str | None = None, card_id: str | None = None,
                        units: Decimal | None = None, amount: Decimal | None = None, product: str = "energy",
                        request_id: str | None = None) -> Authorization:
        tenant = require(info, *AUTHORIZE)
        await own(info, tenant, "device", device_id)
        await own(info, tenant, "account", account_id)
        await own(info, tenant, "card", card_id)
        request = AuthRequest(device_id=device_id, account_id=account_id, card_id=card_id, units=units,
                              amount=amount, product=product, request_id=request_id)
        with domain_errors():
            return Authorization.of(await _svc(info).authorize(request))

    @strawberry.mutation(description="Debit the used units and release the rest (a repeat returns the same).")
    async def commit_reservation(self, info: Info, reservation_id: str, used_units: Decimal) -> ReservationResult:
        tenant = require(info, *AUTHORIZE)
        await own(info, tenant, "reservation", reservation_id)
        if used_units < 0:
            raise api_error("BAD_REQUEST", "usedUnits cannot be negative")
        with domain_errors():
            return ReservationResult.of(await _svc(info).commit(reservation_id, used_units))

    @strawberry.mutation(description="Release a reservation unused (idempotent).")
    async def release_reservation(self, info: Info, reservation_id: str) -> ReservationResult:
        tenant = require(info, *AUTHORIZE)
        await own(info, tenant, "reservation", reservation_id)
        with domain_errors():
            return ReservationResult.of(await _svc(info).release(reservation_id))


@strawberry.type
class PrepaidSubscription:
    """Prepaid events as they happen (graphql-transport-ws)."""

    @strawberry.subscription(description="Low-balance alerts, blocks and restores (of one account, or all).")
    async def prepaid_events(self, info: Info, account_id: str | None = None) -> AsyncGenerator[PrepaidEvent, None]:
        tenant = await require_personal(info) if account_id else require(info, "admin")  # all accounts: admins only
        await own(info, tenant, "account", account_id)
        hub = info.context.services.extra.get("prepaid_events")
        if hub is None:
            raise DomainError("UNAVAILABLE", "prepaid events are not enabled on this hub")
        owners: dict[str, bool] = {}  # account -> the caller's tenant's? (an account never changes tenant)
        async for e in hub.stream(account_id):
            if e.account_id not in owners:
                owners[e.account_id] = await info.context.services.reads.owner("account", e.account_id) == tenant
            if owners[e.account_id]:
                yield PrepaidEvent(id=strawberry.ID(str(e.event_id)), account_id=e.account_id, kind=e.kind,
                                   balance=e.balance, funds=e.funds, currency=e.currency, at=e.at)


# Strawberry types merged into the root Query, Mutation and Subscription by schema.py.
QUERIES: tuple[type, ...] = (PrepaidQuery,)
MUTATIONS: tuple[type, ...] = (PrepaidMutation,)
SUBSCRIPTIONS: tuple[type, ...] = (PrepaidSubscription,)
