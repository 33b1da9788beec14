"""PrepaidService against a real PostgreSQL: ledger, DB-enforced overdraft, authorize/commit/release, cards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from usagehub.core.prepaid import AuthRequest, Denial, Grant, Reason, ReservationState
from usagehub.errors import DomainError
from usagehub.prepaid.service import FlatPricer, PrepaidService
from usagehub.storage.ledger import ledger_sum
from usagehub.storage.registry import Registry

T0 = datetime(2026, 11, 21, 12, tzinfo=UTC)
PRICES = {"energy": Decimal("0.25")}


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


async def setup_accounts(pool: AsyncConnectionPool) -> None:
    reg = Registry(pool)
    await reg.upsert_account(account_id="p1", prepaid=True)
    await reg.upsert_account(account_id="p2", prepaid=True)
    await reg.upsert_account(account_id="post", prepaid=False)
    for dev, acc in (("m1", "p1"), ("m2", "p2"), ("m3", "post")):
        await reg.upsert_device(device_id=dev, profile_id="acme-em340")
        await reg.bind(device_id=dev, account_id=acc, valid_from=T0 - timedelta(days=30))
    await reg.upsert_device(device_id="loose", profile_id="acme-em340")


@pytest.fixture
async def service(pool: AsyncConnectionPool) -> AsyncIterator[PrepaidService]:
    await setup_accounts(pool)
    svc = PrepaidService(pool, FlatPricer(PRICES), reservation_ttl_s=60, clock=Clock())
    yield svc
    await svc.close()


async def balance(pool: AsyncConnectionPool, account: str) -> tuple[Decimal, Decimal, Decimal]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT balance, held FROM prepaid_accounts WHERE account_id = %s", (account,))
        row = await cur.fetchone()
        assert row is not None
        return Decimal(row[0]), Decimal(row[1]), await ledger_sum(conn, account)


async def test_topup_authorize_commit_release(service: PrepaidService, pool: AsyncConnectionPool) -> None:
    top = await service.top_up(account_id="p1", amount=Decimal("10.00"), payment_ref="pay-1", vendor_id="v1")
    again = await service.top_up(account_id="p1", amount=Decimal("10.00"), payment_ref="pay-1", vendor_id="v1")
    assert again.repeated and again.entry_id == top.entry_id
    grant = await service.authorize(AuthRequest(device_id="m1", units=Decimal(8)))
    assert isinstance(grant, Grant) and grant.amount == Decimal("2.00") and grant.units == 8
    assert grant.expires_at == T0 + timedelta(seconds=60)
    assert await balance(pool, "p1") == (Decimal("8.00"), Decimal("2.00"), Decimal("8.00"))
    done = await service.commit(grant.reservation_id, Decimal(3))
    assert done.state is ReservationState.COMMITTED and done.charged == Decimal("0.75")
    assert done.released == Decimal("1.25")
    assert await service.commit(grant.reservation_id, Decimal(3)) == done  # idempotent
    assert await service.release(grant.reservation_id) == done              # too late to release
    assert await balance(pool, "p1") == (Decimal("9.25"), Decimal(0), Decimal("9.25"))
    second = await service.authorize(AuthRequest(device_id="m1", account_id="p1", amount=Decimal(1)))
    assert isinstance(second, Grant) and second.units == 4
    r1 = await service.release(second.reservation_id)
    assert r1.state is ReservationState.RELEASED and r1.released == 1
    assert await service.release(second.reservation_id) == r1
    assert await balance(pool, "p1") == (Decimal("9.25"), Decimal(0), Decimal("9.25"))
    rows = await service.rows("SELECT * FROM vendor_topups", ())
    assert [(r["vendor_id"], r["amount"], r["payment_ref"]) for r in rows] == [("v1", Decimal("10.00"), "pay-1")]
    with pytest.raises(DomainError) as err:
        await service.top_up(account_id="p1", amount=Decimal("11"), payment_ref="pay-1")
    assert err.value.code == "DUPLICATE_PAYMENT_REF"


async def test_denials_have_reasons(service: PrepaidService, pool: AsyncConnectionPool) -> None:
    await service.top_up(account_id="p1", amount=Decimal(1), payment_ref="x")
    await service.register_card(card_id="c1", account_id="p1")
    await service.register_card(card_id="c2", account_id="p2")
    await service.set_blacklisted("c2", True, "stolen")

    async def reason(**kw: object) -> Reason:
        decision = await service.authorize(AuthRequest(**kw))  # type: ignore[arg-type]
        assert isinstance(decision, Denial), decision
        return decision.reason

    assert await reason(device_id="nope", units=Decimal(1)) is Reason.UNKNOWN_DEVICE
    assert await reason(device_id="loose", units=Decimal(1)) is Reason.DEVICE_NOT_BOUND
    assert await reason(device_id="m1", account_id="p2", units=Decimal(1)) is Reason.DEVICE_NOT_BOUND
    assert await reason(device_id="m3", units=Decimal(1)) is Reason.NOT_PREPAID
    assert await reason(device_id="m1", units=Decimal(5)) is Reason.INSUFFICIENT_BALANCE
    assert await reason(device_id="m1", units=Decimal(1), amount=Decimal(1)) is Reason.BAD_REQUEST
    assert await reason(device_id="m1", units=Decimal(-1)) is Reason.BAD_REQUEST
    assert await reason(device_id="loose", card_id="c2", units=Decimal(1)) is Reason.CARD_BLACKLISTED
    assert await reason(device_id="loose", card_id="zz", units=Decimal(1)) is Reason.UNKNOWN_CARD
    ok = await service.authorize(AuthRequest(device_id="loose", card_id="c1", units=Decimal(4)))
    assert isinstance(ok, Grant) and ok.account_id == "p1"
    with pytest.raises(DomainError) as err:
        await service.top_up(account_id="p2", amount=Decimal(5), payment_ref="y", card_id="c2")
    assert err.value.code == "CARD_BLACKLISTED"
    attempts = await service.rows("SELECT card_id, operation, reason FROM prepaid_card_attempts ORDER BY 1, 2", ())
    assert [tuple(a.values()) for a in attempts] == [
        ("c2", "authorize", "CARD_BLACKLISTED"), ("c2", "topup", "CARD_BLACKLISTED"),
        ("zz", "authorize", "UNKNOWN_CARD")]
    await service.set_blacklisted("c2", False)
    assert isinstance(await service.authorize(AuthRequest(device_id="loose", card_id="c2", units=Decimal("0.5"))),
                      Denial)  # p2 has no money, but the card is accepted again
    unknown = await service.commit("nope", Decimal(1))
    assert unknown.reason is Reason.UNKNOWN_RESERVATION and unknown.state is None
    foreign = await service.release(ok.reservation_id, device_id="m2")
    assert foreign.reason is Reason.UNKNOWN_RESERVATION


async def test_database_refuses_overdraft_and_edits(service: PrepaidService, pool: AsyncConnectionPool) -> None:
    await service.configure(account_id="p1", overdraft=Decimal(2))
    await service.top_up(account_id="p1", amount=Decimal(3), payment_ref="t")
    async with pool.connection() as conn:
        with pytest.raises(psycopg.errors.CheckViolation, match="INSUFFICIENT_BALANCE"):
            await conn.execute("INSERT INTO ledger_entries (account_id, kind, amount, currency) "
                               "VALUES ('p1', 'usage', -5.01, 'EUR')")
        await conn.execute("INSERT INTO ledger_entries (account_id, kind, amount, currency) "
                           "VALUES ('p1', 'usage', -5, 'EUR')")
        with pytest.raises(psycopg.errors.CheckViolation):
            await conn.execute("INSERT INTO ledger_entries (account_id, kind, amount, currency) "
                               "VALUES ('p1', 'hold', -0.01, 'EUR')")
        for sql in ("UPDATE ledger_entries SET amount = 100", "DELETE FROM ledger_entries",
                    "TRUNCATE ledger_entries CASCADE"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute(sql)
    assert await balance(pool, "p1") == (Decimal(-2), Decimal(0), Decimal(-2))


async def test_reservations_expire_lazily_and_by_sweep(service: PrepaidService, pool: AsyncConnectionPool) -> None:
    await service.top_up(account_id="p1", amount=Decimal(2), payment_ref="t1")
    await service.top_up(account_id="p2", amount=Decimal(2), payment_ref="t2")
    g1 = await service.authorize(AuthRequest(device_id="m1", units=Decimal(8)))
    g2 = await service.authorize(AuthRequest(device_id="m2", units=Decimal(8)))
    assert isinstance(g1, Grant) and isinstance(g2, Grant)
    assert isinstance(await service.authorize(AuthRequest(device_id="m1", units=Decimal(1))), Denial)
    clock = service.clock
    assert isinstance(clock, Clock)
    clock.now += timedelta(seconds=61)
    assert isinstance(await service.authorize(AuthRequest(device_id="m1", units=Decimal(1))), Grant)  # lazy
    assert await service.sweep() == 1
    assert await balance(pool, "p2") == (Decimal(2), Decimal(0), Decimal(2))
    late = await service.commit(g2.reservation_id, Decimal(4))  # used before it expired: still debited
    assert late.state is ReservationState.COMMITTED and late.charged == 1
    assert await balance(pool, "p2") == (Decimal(1), Decimal(0), Decimal(1))
    assert (await service.release(g1.reservation_id)).state is ReservationState.EXPIRED
    releases = await service.rows("SELECT reservation_id, count(*) AS n FROM ledger_entries WHERE kind = 'release' "
                                  "GROUP BY 1", ())
    assert all(r["n"] == 1 for r in releases) and len(releases) == 2


async def test_repeated_request_id_returns_the_same_grant(service: PrepaidService) -> None:
    await service.top_up(account_id="p1", amount=Decimal(5), payment_ref="t")
    request = AuthRequest(device_id="m1", units=Decimal(4), request_id="r-1")
    first, second = await asyncio.gather(service.authorize(request), service.authorize(request))
    third = await service.authorize(request)
    assert isinstance(first, Grant) and first == second == third
    assert (await service.account("p1")).held == 1  # type: ignore[union-attr]


async def test_two_services_never_overspend(pool: AsyncConnectionPool, database_url: str) -> None:
    """200 concurrent authorize/commit sequences through two services with their own pools."""
    from usagehub.storage.pool import open_pool

    await setup_accounts(pool)
    other_pool = await open_pool(database_url, min_size=1, max_size=4)
    a = PrepaidService(pool, FlatPricer(PRICES))
    b = PrepaidService(other_pool, FlatPricer(PRICES))
    try:
        await a.configure(account_id="p1", overdraft=Decimal("1.00"))
        await a.top_up(account_id="p1", amount=Decimal("5.00"), payment_ref="t")

        async def sequence(i: int) -> str:
            svc = a if i % 2 else b
            decision = await svc.authorize(AuthRequest(device_id="m1", units=Decimal(2 + i % 3)))
            if isinstance(decision, Denial):
                return decision.reason.value
            if i % 4 == 0:
                return (await svc.release(decision.reservation_id)).state.value  # type: ignore[union-attr]
            return (await svc.commit(decision.reservation_id, Decimal(i % 3))).state.value  # type: ignore[union-attr]

        outcomes = await asyncio.gather(*(sequence(i) for i in range(200)))
        assert set(outcomes) <= {"committed", "released", "INSUFFICIENT_BALANCE"}
        assert "INSUFFICIENT_BALANCE" in outcomes
        state = await a.account("p1")
        assert state is not None and state.held == 0 and state.balance >= -1
        async with pool.connection() as conn:
            assert await ledger_sum(conn, "p1") == state.balance
            cur = await conn.execute("SELECT min(balance_after) FROM ledger_entries WHERE account_id = 'p1'")
            assert (await cur.fetchone())[0] >= -1  # type: ignore[index]
    finally:
        await a.close()
        await b.close()
        await other_pool.close()


async def test_metered_usage_is_debited_blocks_and_top_up_restores(pool: AsyncConnectionPool) -> None:
    """The pipeline hook after the SessionEngine debits prepaid usage in the batch transaction."""
    from tests.storage.test_sessions_billing import feed, reading, wired
    from usagehub.pipeline.prepaid_debit import PrepaidDebit
    from usagehub.prepaid.events import PrepaidEventHub

    await setup_accounts(pool)
    pipeline, billing = wired(pool)
    debit = PrepaidDebit(FlatPricer(PRICES), lambda: billing.engine.last_points)
    pipeline.hooks.append(debit.apply)
    service = PrepaidService(pool, FlatPricer(PRICES))
    events = PrepaidEventHub(str(pool.conninfo))
    listener = asyncio.create_task(events.run())
    try:
        await asyncio.wait_for(events.listening.wait(), 5)
        async with events.subscription() as heard:
            await service.configure(account_id="p1", overdraft=Decimal(1), low_threshold=Decimal(2))
            await service.top_up(account_id="p1", amount=Decimal(3), payment_ref="t1")
            t = T0 - timedelta(days=2)
            # 4 kWh, then 12 kWh more: 1.00 + 3.00 EUR against 3 EUR + 1 EUR overdraft
            await feed(pipeline, [reading("m1", 1, t, 1000), reading("m1", 2, t + timedelta(hours=1), 5000)])
            state = await service.account("p1")
            assert state is not None and state.balance == 2 and not state.blocked
            await feed(pipeline, [reading("m1", 3, t + timedelta(hours=2), 17000),
                                  reading("m1", 3, t + timedelta(hours=2), 17000)])  # a duplicate: once
            state = await service.account("p1")
            assert state is not None and state.balance == -1 and state.arrears == 0 and state.blocked
            denied = await service.authorize(AuthRequest(device_id="m1", units=Decimal(1)))
            assert isinstance(denied, Denial) and denied.reason is Reason.ACCOUNT_BLOCKED
            await feed(pipeline, [reading("m1", 4, t + timedelta(hours=3), 21000)])  # 1.00 beyond: arrears
            state = await service.account("p1")
            assert state is not None and state.balance == -1 and state.arrears == 1
            await service.top_up(account_id="p1", amount=Decimal("2.50"), payment_ref="t2")
            state = await service.account("p1")
            assert state is not None and state.balance == Decimal("0.50") and state.arrears == 0
            assert not state.blocked
            kinds = [(await asyncio.wait_for(heard.get(), 5)).kind for _ in range(3)]
            assert kinds == ["low_balance", "blocked", "restored"]
        async with pool.connection() as conn:
            assert await ledger_sum(conn, "p1") == Decimal("0.50")
            cur = await conn.execute("SELECT kind, amount, quantity FROM ledger_entries WHERE account_id = 'p1' "
                                     "AND kind = 'usage' ORDER BY entry_id")
            usage = [(r[0], r[1], r[2]) for r in await cur.fetchall()]
        assert usage == [("usage", Decimal("-1.00"), Decimal(4)), ("usage", Decimal("-3.00"), Decimal(12)),
                         ("usage", Decimal(-1), None)]
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await service.close()


async def test_a_card_of_another_tenant_is_unknown_to_a_device(service: PrepaidService, pool: AsyncConnectionPool
                                                               ) -> None:
    """A device of tenant B presenting tenant A's card gets UNKNOWN_CARD: no hold on A, not even 'blacklisted'."""
    reg = Registry(pool)
    await reg.upsert_device(device_id="b-till", profile_id="acme-em340", tenant="tenant-b")
    await service.top_up(account_id="p1", amount=Decimal(10), payment_ref="a-1")
    await service.register_card(card_id="a-card", account_id="p1")
    await service.register_card(card_id="a-stolen", account_id="p1")
    await service.set_blacklisted("a-stolen", True, "stolen")
    for card in ("a-card", "a-stolen"):
        decision = await service.authorize(AuthRequest(device_id="b-till", card_id=card, units=Decimal(4)))
        assert isinstance(decision, Denial) and decision.reason is Reason.UNKNOWN_CARD, decision
    assert await balance(pool, "p1") == (Decimal(10), Decimal(0), Decimal(10))
    mine = await service.authorize(AuthRequest(device_id="loose", card_id="a-card", units=Decimal(4)))
    assert isinstance(mine, Grant) and mine.account_id == "p1"  # a device of the card's own tenant may use it


async def test_decide_batches_with_replays_and_two_workers_never_overspend(pool: AsyncConnectionPool) -> None:
    """Device batches on two concurrent transactions: a request id repeated within and across batches holds once,
    and the account never goes below zero."""
    from usagehub.adapters.prepaid_port import CommitRequest, ReleaseRequest

    await setup_accounts(pool)
    svc = PrepaidService(pool, FlatPricer(PRICES), workers=2, clock=Clock())
    try:
        await svc.top_up(account_id="p1", amount=Decimal("5.00"), payment_ref="pay-d")
        requests = [AuthRequest(device_id="m1", units=Decimal(2), request_id=f"q{i % 15}") for i in range(30)]
        results = await asyncio.gather(*(svc.decide(requests[i:i + 3]) for i in range(0, 30, 3)))
        flat = [r for batch in results for r in batch]
        by_req: dict[str, set[str]] = {}
        for request, result in zip(requests, flat, strict=True):
            assert request.request_id is not None
            by_req.setdefault(request.request_id, set()).add(
                result.reservation_id if isinstance(result, Grant) else str(getattr(result, "reason", "")))
        assert all(len(v) == 1 for v in by_req.values())  # a request id has one answer, wherever it came
        grants = {r.reservation_id: r for r in flat if isinstance(r, Grant)}
        assert len(grants) == 10  # 10 x 0.50 = 5.00: the rest refused, replays add nothing
        assert await balance(pool, "p1") == (Decimal("0.00"), Decimal("5.00"), Decimal("0.00"))
        first, second = list(grants)[:2]
        settled = await svc.decide([CommitRequest("m1", first, Decimal(1)), ReleaseRequest("m1", second),
                                    CommitRequest("m1", first, Decimal(1)), ReleaseRequest("m2", first)])
        assert settled[0] == settled[2] and settled[0].charged == Decimal("0.25")
        assert settled[3].reason is Reason.UNKNOWN_RESERVATION  # another device's reservation
        assert await balance(pool, "p1") == (Decimal("0.75"), Decimal("4.00"), Decimal("0.75"))
    finally:
        await svc.close()


async def test_ledger_trigger_refusals_undo_their_update(service: PrepaidService, pool: AsyncConnectionPool) -> None:
    """The one-statement trigger (0028) refuses as before, and a refused entry leaves the running balance as it was."""
    await service.top_up(account_id="p1", amount=Decimal(3), payment_ref="t-undo")
    async with pool.connection() as conn:
        for sql, error, message in (
                ("VALUES ('p1', 'usage', -3.01, 'EUR')", psycopg.errors.CheckViolation, "INSUFFICIENT_BALANCE"),
                ("VALUES ('p1', 'topup', 1, 'USD')", psycopg.errors.CheckViolation, "kept in EUR"),
                ("VALUES ('post', 'topup', 1, 'EUR')", psycopg.errors.ForeignKeyViolation, "not prepaid"),
                ("VALUES ('p1', 'release', 0.5, 'EUR')", psycopg.errors.CheckViolation, "held")):
            with pytest.raises(error, match=message):
                await conn.execute(f"INSERT INTO ledger_entries (account_id, kind, amount, currency) {sql}")
            await conn.rollback()
        cur = await conn.execute("INSERT INTO ledger_entries (account_id, kind, amount, currency) "
                                 "VALUES ('p1', 'usage', -3, 'EUR') RETURNING balance_after")
        assert await cur.fetchone() == (Decimal(0),)
        await conn.commit()
    assert await balance(pool, "p1") == (Decimal(0), Decimal(0), Decimal(0))


async def test_batch_functions_keep_generic_plans(pool: AsyncConnectionPool) -> None:
    """Migration 0032: the batch functions' statements are not re-planned per call (server CPU per batch)."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT proname, proconfig FROM pg_proc WHERE proname LIKE 'prepaid_batch_%' "
                                 "ORDER BY proname")
        rows = await cur.fetchall()
    assert rows == [("prepaid_batch_read", ["plan_cache_mode=force_generic_plan", "enable_seqscan=off"]),
                    ("prepaid_batch_write", ["plan_cache_mode=force_generic_plan", "enable_seqscan=off"])]
