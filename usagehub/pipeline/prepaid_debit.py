"""Continuous debit: the pipeline batch hook that prices and debits the metered usage of prepaid accounts.

Runs after the SessionEngine hook, in the batch transaction, on the account-bound
usage points that hook stored (``engine.last_points``): each point is new usage
(events are deduplicated before), so each is debited exactly once; a retraction
(negative point) credits back. Debits stop at the overdraft; the rest becomes
arrears, collected from the next top-up. Crossing the low threshold or
exhausting the account records an event (NOTIFY at commit); commands to the
devices go out after the commit (``usagehub.prepaid.commands``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from decimal import Decimal

from usagehub.core import prepaid as core
from usagehub.core.allocation import Point, PointKind
from usagehub.core.events import UsageEvent
from usagehub.errors import DomainError
from usagehub.storage.ledger import LedgerRow, append, lock_states, settle, with_states
from usagehub.storage.pool import Connection
from usagehub.storage.prepaid_batch import Pricer

log = logging.getLogger(__name__)


class PrepaidDebit:
    """Batch hook: debit the priced usage points of prepaid accounts in ``metered`` debit mode."""

    def __init__(self, pricer: Pricer, points: Callable[[], Sequence[Point]]) -> None:
        self.pricer, self.points = pricer, points
        self.debited = 0  # entries written (metrics, tests)
        self.unpriced = 0  # usage points rating could not price (not debited; logged per batch)

    async def apply(self, conn: Connection, events: Sequence[UsageEvent]) -> None:
        """Debit this batch's usage points."""
        usage = [p for p in self.points() if p.kind is PointKind.USAGE and p.value != 0 and p.account_id]
        if not usage:
            return
        locked = await lock_states(conn, {p.account_id for p in usage if p.account_id})
        targets = {a for a, lk in locked.items() if lk.prepaid and lk.debit_mode == "metered"}
        if not targets:
            return
        totals: defaultdict[tuple[str, str], list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
        unpriced = 0
        for p in usage:
            if p.account_id in targets:
                try:
                    charge = await self.pricer.usage_charge(conn, account_id=p.account_id, product=p.product,
                                                            quantity=abs(p.value), at=p.start)
                except DomainError:
                    unpriced += 1
                    continue
                total = totals[(p.account_id, p.product)]
                total[0] += p.value
                total[1] += charge if p.value > 0 else -charge
        if unpriced:
            self.unpriced += unpriced
            log.warning("%d prepaid usage points could not be priced and were not debited", unpriced)
        states = with_states(locked)
        before = {a: states[a] for a in targets}
        rows: list[LedgerRow] = []
        for (account, product), (quantity, charge) in sorted(totals.items()):
            if charge == 0:
                continue
            plan = core.plan_debit(states[account], charge)
            rows += [LedgerRow(account_id=account, entry=e, currency=plan.state.currency, product=product,
                               quantity=quantity) for e in plan.entries]
            states[account] = plan.state
        await append(conn, rows)
        self.debited += len(rows)
        await settle(conn, before, {a: states[a] for a in targets})
