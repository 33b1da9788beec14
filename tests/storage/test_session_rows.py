"""Sessions stored in one statement read back equal, whatever their device ids hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from psycopg_pool import AsyncConnectionPool

from usagehub.core.aggregation import Partial
from usagehub.core.events import Aggregation
from usagehub.core.periods import Period
from usagehub.core.sessions import Carry, CloseReason, Resume, Session
from usagehub.storage.sessions import SESSION_COLUMNS, insert_sessions, session_id, session_of

NOV = Period(start=datetime(2026, 10, 31, 23, tzinfo=UTC), end=datetime(2026, 11, 30, 23, tzinfo=UTC), label="2026-11")
AT = datetime(2026, 11, 3, 8, tzinfo=UTC)
HOSTILE = frozenset({'a"b', "c\\d", "{x,y}", "NULL", " spaced ", "", "ünï", "q\\\"}", "'; DROP TABLE sessions; --"})


def session(account: str, devices: frozenset[str], n: int, *, open_: bool) -> Session:
    key = (AT + timedelta(hours=n), 1, AT + timedelta(hours=n, minutes=15), sorted(devices)[0] if devices else "",
           "energy", "", "")
    part = Partial(aggregation=Aggregation.SUM, count=2, total=Decimal("1.250"), seconds=Decimal(0))
    return Session(account_id=account, service="electricity", period=NOV, start=key[0], end=key[2],
                   closed_reason=None if open_ else CloseReason.IDLE, activity_count=2, devices=devices,
                   partials={"energy": part}, resume=Resume(key=key),
                   expires_at=key[2] + timedelta(hours=1) if open_ else None,
                   carry=Carry(last_key=key, last=key[2], base={"energy": part}) if open_ else None)


async def test_sessions_of_two_tenants_with_hostile_device_ids_read_back_equal(pool: AsyncConnectionPool) -> None:
    written = [session("t1-acc", HOSTILE, 0, open_=False), session("t1-acc", frozenset({"m1"}), 1, open_=True),
               session("t2-acc", frozenset(), 2, open_=False), session("t2-acc", frozenset({"m2", "m3"}), 3,
                                                                       open_=True)]
    async with pool.connection() as conn, conn.transaction():
        await insert_sessions(conn, written)
    async with pool.connection() as conn:
        cur = await conn.execute(f"SELECT {SESSION_COLUMNS} FROM sessions ORDER BY start_ts")
        rows = await cur.fetchall()
    assert [session_of(r) for r in rows] == written
    assert [r[0] for r in rows] == [session_id(s) for s in written]
    assert {frozenset(r[10]) for r in rows} == {s.devices for s in written}
