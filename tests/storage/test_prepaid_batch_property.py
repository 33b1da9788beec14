"""A batch of device requests decides exactly what its requests decide one by one, in order.

Each example builds the same accounts twice (two tenants, cards, a blacklisted card, an
unbound and an unknown device) and runs one random request sequence on each copy: on
one as two batches (``PrepaidService.decide``: one transaction each, priced by rating
with what ``prepaid_batch_read`` read under the lock), on the other one request per
transaction. Answers, balances, holds and ledger entries must be the same.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from typing import Any, TypeVar

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.integration.test_prepaid_hubs import PLAN
from tests.storage.test_prepaid import T0, Clock
from usagehub.adapters.prepaid_port import CommitRequest, DeviceRequest, ReleaseRequest
from usagehub.core.prepaid import AuthRequest, Denial, Grant, Settlement
from usagehub.prepaid.service import PrepaidService
from usagehub.rating.service import RatingService
from usagehub.storage.pool import open_pool
from usagehub.storage.registry import Registry

T = TypeVar("T")
_COUNTER = itertools.count()
DEVICES = ("m1", "m2", "t1", "loose", "ghost")  # t1 is tenant B's; loose is unbound; ghost is not registered
CARDS = (None, None, "card", "stolen")          # tenant A's cards (stolen is blacklisted)


def run(coro: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on a fresh loop in a worker thread (hypothesis calls the test synchronously)."""
    async def main() -> T:
        return await coro()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


_auth = st.tuples(st.just("auth"), st.sampled_from(DEVICES), st.sampled_from(["0.5", "1", "2.25", "0", "-1"]),
                  st.sampled_from(CARDS), st.sampled_from([None, "r1", "r2", "r3"]))
_settle = st.tuples(st.sampled_from(["commit", "release"]), st.integers(0, 7), st.sampled_from(["0", "0.5", "3"]),
                    st.sampled_from(["owner", "owner", "m2", "t1"]))


async def accounts(pool: Any, side: str, topup: Decimal, overdraft: Decimal, svc: PrepaidService) -> None:
    reg = Registry(pool)
    for account, tenant in (("a", "default"), ("b", "default"), ("q", "tenant-b")):
        await reg.upsert_account(account_id=f"{side}{account}", prepaid=True, tenant=tenant)
    for device, account, tenant in (("m1", "a", "default"), ("m2", "b", "default"), ("t1", "q", "tenant-b")):
        await reg.upsert_device(device_id=f"{side}{device}", profile_id="acme-em340", tenant=tenant)
        await reg.bind(device_id=f"{side}{device}", account_id=f"{side}{account}", valid_from=T0 - timedelta(days=9),
                       tenant=tenant)
    await reg.upsert_device(device_id=f"{side}loose", profile_id="acme-em340")
    await svc.configure(account_id=f"{side}a", overdraft=overdraft)
    for account, amount in (("a", topup), ("b", Decimal(1)), ("q", Decimal(2))):
        if amount > 0:
            await svc.top_up(account_id=f"{side}{account}", amount=amount, payment_ref=f"{side}{account}-pay")
    await svc.register_card(card_id=f"{side}card", account_id=f"{side}a")
    await svc.register_card(card_id=f"{side}stolen", account_id=f"{side}a")
    await svc.set_blacklisted(f"{side}stolen", True, "stolen")


def requests(side: str, ops: list[tuple[Any, ...]], grants: list[tuple[Grant, str]]) -> list[DeviceRequest]:
    """The device requests of ``ops`` for one copy; commits and releases name earlier grants (or none)."""
    out: list[DeviceRequest] = []
    for op in ops:
        if op[0] == "auth":
            _, device, units, card, req = op
            out.append(AuthRequest(device_id=f"{side}{device}", units=Decimal(units), request_id=req,
                                   card_id=f"{side}{card}" if card else None))
            continue
        kind, index, used, who = op
        grant, owner = grants[index % len(grants)] if grants else (None, f"{side}m1")
        rid = grant.reservation_id if grant else "no-such-reservation"
        device = owner if who == "owner" else f"{side}{who}"  # m2 / t1: a hostile device naming it
        out.append(CommitRequest(device, rid, Decimal(used)) if kind == "commit" else ReleaseRequest(device, rid))
    return out


def shape(results: list[Any], names: dict[str, int]) -> list[Any]:
    """Results with reservation ids replaced by their order of appearance (the ids are random)."""
    def rid(r: str | None) -> int | None:
        return None if r is None else names.setdefault(r, len(names))

    out: list[Any] = []
    for r in results:
        if isinstance(r, Grant):
            out.append(("grant", rid(r.reservation_id), r.account_id[1:], r.units, r.amount, r.currency))
        elif isinstance(r, Denial):
            out.append(("denial", r.reason))
        else:
            assert isinstance(r, Settlement)
            out.append(("settlement", rid(r.reservation_id) if r.state else None, r.state, r.used_units, r.charged,
                        r.released, r.reason))
    return out


async def state(pool: Any, side: str) -> list[Any]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT substr(account_id, 2), balance, held, blocked, arrears, (SELECT array_agg(ARRAY[kind, "
            "amount::text] ORDER BY entry_id) FROM ledger_entries l WHERE l.account_id = pa.account_id), "
            "(SELECT count(*) FROM "
            "prepaid_card_attempts c WHERE c.account_id = pa.account_id OR c.card_id LIKE %s || '%%') "
            "FROM prepaid_accounts pa WHERE account_id LIKE %s || '_' ORDER BY 1", (side, side))
        return list(await cur.fetchall())


async def scenario(url: str, first: list[tuple[Any, ...]], second: list[tuple[Any, ...]], topup: Decimal,
                   overdraft: Decimal) -> tuple[list[Any], list[Any]]:
    n = next(_COUNTER)
    pool = await open_pool(url, min_size=1, max_size=4)
    rating = RatingService(pool)
    await rating.start()
    await rating.load_plans(PLAN, "plans.yaml")  # the same plans each example: one revision in all
    svc = PrepaidService(pool, rating, clock=Clock())
    try:
        shapes, states = [], []
        for side, batched in ((f"b{n}_", True), (f"s{n}_", False)):
            await accounts(pool, side, topup, overdraft, svc)
            names: dict[str, int] = {}
            results: list[Any] = []
            grants: list[tuple[Grant, str]] = []
            for ops in (first, second):
                reqs = requests(side, ops, grants)
                got = (await svc.decide(reqs) if batched
                       else [r for one in reqs for r in await svc.decide([one])])
                grants += [(g, r.device_id) for r, g in zip(reqs, got, strict=True) if isinstance(g, Grant)]
                results += got
            shapes.append(shape(results, names))
            states.append(await state(pool, side))
        return shapes, states
    finally:
        await svc.close()
        await pool.close()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.lists(_auth, min_size=1, max_size=12), second=st.lists(st.one_of(_auth, _settle), max_size=12),
       topup=st.sampled_from([Decimal(0), Decimal("1.5"), Decimal(5)]), overdraft=st.sampled_from([Decimal(0),
                                                                                                    Decimal(1)]))
# Found by CI (2026-11-29): a commit that exhausts the account blocks it, so a later request of the same batch
# is refused ACCOUNT_BLOCKED, as the next transaction would refuse it (the batch said INSUFFICIENT_BALANCE).
@example(first=[("auth", "m1", "0.5", None, None)] * 2, second=[("commit", 0, "3", "owner"),
                                                               ("auth", "m1", "0.5", None, None)],
         topup=Decimal(0), overdraft=Decimal(1))
def test_a_batch_decides_as_its_requests_one_by_one(database_url: str, first: list[tuple[Any, ...]],
                                                     second: list[tuple[Any, ...]], topup: Decimal,
                                                     overdraft: Decimal) -> None:
    (batched, serial), (batched_state, serial_state) = run(
        lambda: scenario(database_url, first, second, topup, overdraft))
    assert batched == serial
    assert batched_state == serial_state
    assert len(batched_state) == 3  # the three accounts of the side, no other tenant's rows
