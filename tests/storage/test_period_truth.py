"""Kept per-period partials in PostgreSQL: equal to the merge of the period's sessions, per tenant's account."""

from __future__ import annotations

from datetime import timedelta

from psycopg_pool import AsyncConnectionPool

from tests.storage.test_sessions_billing import OCT, alarm, feed, reading, records, registry, wired
from usagehub.core.billing import period_partials, truth_from_kept, truth_from_sessions
from usagehub.storage.period_truth import kept_truth
from usagehub.storage.registry import Registry
from usagehub.storage.sessions import SESSION_COLUMNS, session_of

__all__ = ["registry"]  # the fixture, shared


async def _check_kept_equals_sessions(pool: AsyncConnectionPool, *, all_kept: bool = True) -> int:
    """Every kept row equals the merge of its period's sessions; the number of periods kept."""
    async with pool.connection() as conn:
        cur = await conn.execute(f"SELECT {SESSION_COLUMNS} FROM sessions")
        sessions = [session_of(r) for r in await cur.fetchall()]
        full = period_partials(sessions)
        cur = await conn.execute("SELECT account_id, period_start FROM period_truth")
        kept_keys = {(str(r[0]), r[1]) for r in await cur.fetchall()}
        assert not all_kept or {(a, p.start) for a, p in full} <= kept_keys
        truth = await kept_truth(conn, list(full))
    assert truth == truth_from_kept(full)
    assert {k: v for k, v in truth.items() if v != 0} == {k: v for k, v in truth_from_sessions(sessions).items()
                                                           if v != 0}
    return len(full)


async def test_kept_partials_follow_late_duplicate_and_rewritten_sessions(pool: AsyncConnectionPool,
                                                                          registry: Registry) -> None:
    await registry.upsert_account(account_id="b1", tenant="other", timezone="Asia/Tokyo")
    await registry.upsert_device(device_id="m9", profile_id="acme-em340", tenant="other")
    await registry.bind(device_id="m9", account_id="b1", valid_from=OCT - timedelta(days=60), tenant="other")
    pipeline, _ = wired(pool)
    step = timedelta(minutes=15)
    # Two tenants' meters across a month end (a1 in Berlin, b1 in Tokyo), alarms on a1's panel.
    start = OCT + timedelta(days=30)
    await feed(pipeline, [reading(d, k, start + step * k, 1000 * k + (7 if d == "m9" else 0))
                          for k in range(0, 200, 2) for d in ("m1", "m9")]
               + [alarm("ax", f"x{k}", start + timedelta(hours=5 * k)) for k in range(8)])
    assert await _check_kept_equals_sessions(pool) >= 4
    before_b1 = await records(pool, "b1")
    # Late and duplicate readings of a1 only (they split stored deltas, one across the month end).
    await feed(pipeline, [reading("m1", k, start + step * k, 1000 * k + 5) for k in range(1, 200, 6)]
               + [reading("m1", 4, start + step * 4, 4000)])
    assert await _check_kept_equals_sessions(pool) >= 4
    await _check_records_equal_sessions(pool)
    assert await records(pool, "b1") == before_b1  # the other tenant's account is not touched
    # Kept rows lost (a database from before them): built from the sessions when next read.
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM period_truth WHERE account_id = 'a1'")
    await feed(pipeline, [reading("m1", 500, start + step * 500, 1000 * 500)])
    await _check_records_equal_sessions(pool)
    await _check_kept_equals_sessions(pool, all_kept=False)  # October, not touched since, is built here


async def _check_records_equal_sessions(pool: AsyncConnectionPool) -> None:
    """Every (unbilled, regular) record equals the truth recomputed from all sessions."""
    async with pool.connection() as conn:
        cur = await conn.execute(f"SELECT {SESSION_COLUMNS} FROM sessions")
        truth = truth_from_sessions(session_of(r) for r in await cur.fetchall())
    want = {f"{a}/{p.label}/{product}": v for (a, p, product), v in truth.items() if v != 0}
    got: dict[str, object] = {}
    for account in ("a1", "b1"):
        got |= {k: v[0] for k, v in (await records(pool, account)).items() if v[0] != 0}
    assert got == want
