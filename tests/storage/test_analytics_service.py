"""Features, segments with history, pseudonyms and top consumers over a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from psycopg_pool import AsyncConnectionPool

from tests.storage.analytics_data import Row, add_accounts, copy_points
from usagehub.analytics.service import AnalyticsService
from usagehub.core.analytics.rules import RuleError
from usagehub.errors import DomainError
from usagehub.storage.keys import ApiKeys

AS_OF = date(2026, 10, 31)


def daily(account: str, first: date, days: int, per_day: Decimal, evening: bool, zone_hour_utc: int) -> list[Row]:
    """One point a day at a fixed UTC hour (evening or morning in Berlin)."""
    hour = 18 if evening else zone_hour_utc
    return [(account, "electricity", f"{account}-m", "energy", "usage",
             datetime(first.year, first.month, first.day, hour, tzinfo=UTC) + timedelta(days=i), per_day)
            for i in range(days)]


async def _setup(pool: AsyncConnectionPool) -> AnalyticsService:
    await add_accounts(pool, {"evening-fall": "Europe/Berlin", "morning-flat": "Europe/Berlin",
                              "alarm-only": "UTC"})
    rows = daily("evening-fall", date(2026, 9, 1), 31, Decimal(10), True, 0)  # September: 10 a day
    rows += daily("evening-fall", date(2026, 10, 2), 30, Decimal(6), True, 0)  # then 6 a day: -40 %
    rows += daily("morning-flat", date(2026, 9, 1), 61, Decimal(5), False, 6)
    rows += [("alarm-only", "security", "panel", "arming", "state", datetime(2026, 10, 20, 3, tzinfo=UTC)
              + timedelta(hours=i), Decimal(1)) for i in range(7)]
    await copy_points(pool, rows)
    return AnalyticsService(pool)


async def _ledger(pool: AsyncConnectionPool) -> bool:
    """Top-ups for evening-fall when the prepaid room's ledger table exists (never created here)."""
    async with pool.connection() as conn:
        exists = (await (await conn.execute("SELECT to_regclass('ledger_entries') IS NOT NULL")).fetchone())[0]  # type: ignore[index]
        if not exists:
            return False
        await conn.execute("UPDATE accounts SET prepaid = true WHERE account_id = 'evening-fall'")
        for i, (kind, amount) in enumerate([("topup", 20), ("usage", Decimal("-19.6")), ("topup", 30)]):
            await conn.execute(
                "INSERT INTO ledger_entries (account_id, kind, amount, currency, created_at, payment_ref) "
                "VALUES ('evening-fall', %s, %s, 'EUR', %s, %s)",
                (kind, amount, datetime(2026, 10, 10 + i, 12, tzinfo=UTC), f"pay-{i}" if kind == "topup" else None))
    return True


async def test_features_segments_and_history(pool: AsyncConnectionPool) -> None:
    service = await _setup(pool)
    has_ledger = await _ledger(pool)
    result = await service.refresh_features(AS_OF)
    assert (result.products, result.accounts) == (2, 3)
    fall = await service.features("evening-fall")
    energy = fall["products"][0]
    assert energy["evening_share"] == Decimal(1)  # 18:00 UTC is 19/20:00 in Berlin
    assert energy["mom_trend"] == Decimal("-0.4")
    assert energy["avg_daily"] == Decimal(6)
    assert (await service.features("alarm-only"))["activity"] == 7
    if has_ledger:
        assert fall["topups"] == 2 and fall["topup_typical"] == Decimal(25)
        assert fall["days_near_zero"] == 2  # 0.40 left on the 11th, carried into the 12th until the top-up
    else:
        assert fall["topups"] == 0 and fall["topup_typical"] is None

    seg = await service.save_segment(tenant="default", name="evening fallers", product="energy",
                                     rule="evening_share >= 0.4 and mom_trend <= -20%")
    t1 = datetime(2026, 11, 1, tzinfo=UTC)
    diff = await service.evaluate("default", seg.segment_id, t1)
    assert diff.members == ("evening-fall",) and diff.entered == ("evening-fall",)
    members = await service.members("default", seg.segment_id, 0, 10)
    assert members[0].features == {"evening_share": Decimal(1), "mom_trend": Decimal("-0.4")}

    # The rule changes: the member leaves, another enters; history keeps both, with times.
    await service.save_segment(tenant="default", name="evening fallers", product="energy",
                               rule="morning_share > 0.5", segment_id=seg.segment_id)
    t2 = t1 + timedelta(days=1)
    diff = await service.evaluate("default", seg.segment_id, t2)
    assert (diff.entered, diff.left) == (("morning-flat",), ("evening-fall",))
    changes = await service.changes("default", seg.segment_id)
    assert [(c.account_id, c.change, c.at) for c in changes] == [
        ("evening-fall", "left", t2), ("morning-flat", "entered", t2), ("evening-fall", "entered", t1)]
    assert (await service.segment("default", seg.segment_id)).members == 1

    # The daily job (usagehub serve runs it after each midnight): features again, every segment evaluated.
    result, evaluated = await service.daily(AS_OF, t2 + timedelta(days=1))
    assert (result.products, result.accounts) == (2, 3)
    assert [(t, s.segment_id, d.members, d.entered, d.left) for t, s, d in evaluated] == \
        [("default", seg.segment_id, ("morning-flat",), (), ())]


async def test_bad_rules_and_tenancy(pool: AsyncConnectionPool) -> None:
    service = AnalyticsService(pool)
    with pytest.raises(RuleError, match="position 15 at end"):
        await service.save_segment(tenant="default", name="x", product="energy", rule="evening_share >")
    seg = await service.save_segment(tenant="default", name="x", product="energy", rule="avg_daily > 1")
    with pytest.raises(DomainError, match="exists"):
        await service.save_segment(tenant="default", name="x", product="energy", rule="avg_daily > 2")
    with pytest.raises(DomainError, match="no segment"):
        await service.evaluate("other-tenant", seg.segment_id, datetime(2026, 1, 1, tzinfo=UTC))


async def test_pseudonyms_are_stable_and_personal_data_is_granted(pool: AsyncConnectionPool) -> None:
    await add_accounts(pool, {"alice": "UTC", "bob": "UTC"})
    service = AnalyticsService(pool)
    keys = ApiKeys(pool)
    _, plain = await keys.create(role="analytics")
    _, personal = await keys.create(role="analytics")
    _, admin = await keys.create(role="admin")
    await service.grant_personal(personal.key_id)
    assert not await service.personal(plain)
    assert await service.personal(personal) and await service.personal(admin)
    shown = await service.show("alice", personal=False)
    assert shown.startswith("p_") and "alice" not in shown and shown == await service.show("alice", False)
    assert shown != await service.show("bob", False)
    assert await service.resolve("default", shown, personal=False) == "alice"
    with pytest.raises(DomainError, match="pseudonymous"):
        await service.resolve("default", "alice", personal=False)


async def test_top_consumers(pool: AsyncConnectionPool) -> None:
    service = await _setup(pool)
    top = await service.top(tenant="default", product="energy", market="DE", since=date(2026, 9, 1),
                            until=date(2026, 11, 1), limit=1)
    assert [(c.account_id, c.quantity) for c in top] == [("evening-fall", Decimal(490))]
