"""Pure prepaid decisions: holds, commits, debits with arrears, block/restore, property-based invariants."""

from __future__ import annotations

from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from usagehub.core import prepaid as p
from usagehub.core.prepaid import AccountState, AuthRequest, EntryKind, Notice, Reason

D = Decimal


def acct(**kw: object) -> AccountState:
    return AccountState(account_id="a", currency="EUR", **kw)  # type: ignore[arg-type]


def test_hold_commit_release_keep_the_ledger_sum() -> None:
    s = acct(balance=D(10))
    assert p.refusal(s, D(11)) is Reason.INSUFFICIENT_BALANCE
    assert p.refusal(acct(balance=D(10), overdraft=D(1)), D(11)) is None
    assert p.refusal(acct(balance=D(10), blocked=True), D(1)) is Reason.ACCOUNT_BLOCKED
    held = p.plan_hold(s, D(4))
    assert held.state.balance == 6 and held.state.held == 4 and held.state.funds == 10
    done = p.plan_commit(held.state, D(4), D(3))
    assert [(e.kind, e.amount) for e in done.entries] == [(EntryKind.RELEASE, D(4)), (EntryKind.USAGE, D(-3))]
    assert done.state.balance == 7 and done.state.held == 0
    assert p.plan_hold(s, D(0)).entries == ()


def test_debit_stops_at_the_overdraft_and_the_rest_is_arrears() -> None:
    s = acct(balance=D(1), overdraft=D(2))
    plan = p.plan_debit(s, D(5))
    assert [e.amount for e in plan.entries] == [D(-3)] and plan.state.balance == -2 and plan.state.arrears == 2
    credit = p.plan_debit(plan.state, D(-3))  # a retraction pays the arrears first
    assert [e.amount for e in credit.entries] == [D(1)] and credit.state.arrears == 0
    topped = p.plan_topup(plan.state, D(10))
    assert [(e.kind, e.amount) for e in topped.entries] == [(EntryKind.TOPUP, D(10)), (EntryKind.USAGE, D(-2))]
    assert topped.state.balance == 6 and topped.state.arrears == 0


def test_notices_low_block_restore() -> None:
    s = acct(balance=D(10), low_threshold=D(5))
    low = p.plan_debit(s, D(6)).state
    assert p.notices(s, low)[1] == [Notice.LOW_BALANCE]
    empty = p.plan_debit(low, D(4)).state
    final, found = p.notices(low, empty)
    assert found == [Notice.BLOCKED] and final.blocked
    assert p.notices(final, p.plan_topup(final, D("0.01")).state)[1] == [Notice.RESTORED]
    # a hold never blocks: funds ignore open reservations
    held = p.plan_hold(acct(balance=D(3)), D(3)).state
    assert p.notices(acct(balance=D(3)), held) == (held, [])


def test_units_for_amount_and_request_checks() -> None:
    assert p.units_for_amount(D(1), D("0.3")) == D("3.333")
    assert p.units_for_amount(D(1), D(0)) == 0
    assert p.request_problem(AuthRequest(device_id="d", units=D(1))) is None
    assert p.request_problem(AuthRequest(device_id="d")) is not None
    assert p.request_problem(AuthRequest(device_id="d", amount=D("NaN"))) is not None
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert p.expired(now, now) and not p.expired(now + timedelta(seconds=1), now)


money = st.decimals(min_value=0, max_value=50, places=2)
ops = st.lists(st.tuples(st.sampled_from(["hold", "commit", "release", "debit", "topup", "credit"]), money),
               max_size=40)


@settings(max_examples=300, deadline=None)
@given(overdraft=money, start=money, script=ops)
def test_no_sequence_goes_beyond_the_overdraft(overdraft: Decimal, start: Decimal,
                                               script: list[tuple[str, Decimal]]) -> None:
    """Whatever happens, balance >= -overdraft, held >= 0, and the entries sum to the balance."""
    s = p.plan_topup(acct(overdraft=overdraft), start + D("0.01")).state
    total = s.balance
    holds: list[Decimal] = []
    for op, x in script:
        if op == "hold":
            if p.refusal(s, x) is not None:
                continue
            plan = p.plan_hold(s, x)
            holds.append(x)
        elif op in ("commit", "release") and holds:
            hold = holds.pop()
            plan = p.plan_commit(s, hold, x) if op == "commit" else p.plan_release(s, hold)
        elif op == "debit":
            plan = p.plan_debit(s, x)
        elif op == "credit":
            plan = p.plan_debit(s, -x)
        elif op == "topup" and x > 0:
            plan = p.plan_topup(s, x)
        else:
            continue
        total += sum((e.amount for e in plan.entries), D(0))
        for e in plan.entries:
            if e.amount < 0:  # what the ledger trigger checks entry by entry
                s = p.apply(s, e)
                assert s.balance >= -overdraft
            else:
                s = p.apply(s, e)
        s = plan.state
        assert s.balance == total and s.balance >= -overdraft and s.held == sum(holds, D(0)) and s.arrears >= 0


@settings(max_examples=200, deadline=None)
@given(state=st.builds(p.AccountState, account_id=st.text(min_size=1, max_size=3),
                       currency=st.sampled_from(["EUR", "CHF"]), balance=money, held=money, overdraft=money,
                       low_threshold=money, arrears=money, blocked=st.booleans()),
       kind=st.sampled_from(list(EntryKind)), amount=money)
def test_apply_changes_balance_and_held_only(state: AccountState, kind: EntryKind, amount: Decimal) -> None:
    """``apply`` builds the next state field by field (p24): every field but balance and held is kept, so a
    field added to AccountState later and forgotten there fails here."""
    after = p.apply(state, p.Entry(kind=kind, amount=-amount))
    assert after.balance == state.balance - amount
    assert after.held == state.held + (amount if kind in (EntryKind.HOLD, EntryKind.RELEASE) else 0)
    for f in fields(AccountState):
        if f.name not in ("balance", "held"):
            assert getattr(after, f.name) == getattr(state, f.name), f.name
    final, found = p.notices(state, after)
    assert final.blocked == (Notice.BLOCKED in found or (after.blocked and Notice.RESTORED not in found))
    assert replace(final, blocked=after.blocked) == after
