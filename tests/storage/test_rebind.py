"""Bindings registered after the data, and idle sessions closed by the sweep, against a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from tests.storage.test_sessions_billing import NOW, feed, reading, records, wired
from usagehub.billing.service import BillingService
from usagehub.core.allocation import MeterInfo, allocate_entry
from usagehub.core.binding import Binding, BindingIndex
from usagehub.core.counters import EntryKind, UsageEntry
from usagehub.core.events import Aggregation
from usagehub.pipeline.rebind import moved_by, reallocate, rebind, sweep_expired
from usagehub.storage.registry import Registry
from usagehub.storage.sessions import origin_of

MAR = datetime(2026, 3, 1, tzinfo=UTC)
MOVE = datetime(2026, 3, 15, 12, 30, tzinfo=UTC)
ZONES = {"a": ZoneInfo("Europe/Berlin"), "b": ZoneInfo("America/New_York")}


def registry_for(pool: AsyncConnectionPool, billing: BillingService) -> Registry:
    async def on_bind(conn: object, device: str, at: datetime) -> None:
        await rebind(billing.engine, conn, device, at)  # type: ignore[arg-type]
    return Registry(pool, on_bind=on_bind)


async def points(pool: AsyncConnectionPool, account: str) -> list[tuple[object, ...]]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT service, product, kind, start_ts, end_ts, value FROM session_points WHERE account_id = %s "
            "ORDER BY start_ts, end_ts, value", (account,))
        return [tuple(r) for r in await cur.fetchall()]


def stream(device: str) -> list[object]:
    """Readings every 9h 17m over six weeks: deltas straddle the move and the month boundary."""
    step = timedelta(hours=9, minutes=17)
    return [reading(device, i, MAR - timedelta(days=3) + i * step, 1000 * i + (i * i) % 700) for i in range(110)]


async def test_a_move_registered_late_allocates_exactly_as_if_registered_first(pool: AsyncConnectionPool) -> None:
    pipeline, billing = wired(pool)
    reg = registry_for(pool, billing)
    for suffix in ("late", "first"):
        await reg.upsert_account(account_id=f"a-{suffix}", timezone="Europe/Berlin")
        await reg.upsert_account(account_id=f"b-{suffix}", timezone="America/New_York")
        await reg.upsert_device(device_id=f"m-{suffix}", profile_id="acme-em340")
        await reg.bind(device_id=f"m-{suffix}", account_id=f"a-{suffix}", valid_from=MAR - timedelta(days=30))
    await reg.bind(device_id="m-first", account_id="b-first", valid_from=MOVE)
    await feed(pipeline, stream("m-first"))  # type: ignore[arg-type]
    await feed(pipeline, stream("m-late"))  # type: ignore[arg-type]
    before = await records(pool, "a-late")
    assert await records(pool, "b-late") == {}

    await reg.bind(device_id="m-late", account_id="b-late", valid_from=MOVE)  # the move, learned afterwards

    # An open record that lost all its usage stays, amended to zero (its versions tell the story).
    assert (await records(pool, "a-late"))["a-late/2026-04/energy"][:2] == (Decimal(0), "open")
    for account in ("a", "b"):
        late, first = await records(pool, f"{account}-late"), await records(pool, f"{account}-first")
        assert {k.replace("-late", ""): v[:3] for k, v in late.items() if v[0]} == \
               {k.replace("-first", ""): v[:3] for k, v in first.items()}
        assert await points(pool, f"{account}-late") == await points(pool, f"{account}-first")
    after = await records(pool, "a-late")
    moved = sum(v[0] for v in before.values()) - sum(v[0] for v in after.values())
    assert moved == sum(v[0] for v in (await records(pool, "b-late")).values()) > 0


async def test_unbound_usage_becomes_billable_when_bound_and_billed_records_get_adjustments(
        pool: AsyncConnectionPool) -> None:
    pipeline, billing = wired(pool)
    reg = registry_for(pool, billing)
    await reg.upsert_account(account_id="acc", timezone="UTC")
    await reg.upsert_account(account_id="new", timezone="UTC")
    await reg.upsert_device(device_id="m1", profile_id="acme-em340")
    day = [MAR + timedelta(days=d, hours=6) for d in range(31)]
    await feed(pipeline, [reading("m1", d, day[d], 500 * d) for d in range(0, 31, 3)])
    assert await records(pool, "acc") == {}  # kept, not billable yet

    await reg.bind(device_id="m1", account_id="acc", valid_from=MAR)
    assert await records(pool, "acc") == {"acc/2026-03/energy": (Decimal(15), "open", "regular", 1)}

    await billing.mark_billed(tenant="default", record_ids=["acc/2026-03/energy"], author="k")
    # The device had moved on 16 March: the billed record stays, an adjustment takes the difference.
    await reg.bind(device_id="m1", account_id="new", valid_from=day[15])
    acc = await records(pool, "acc")
    assert acc["acc/2026-03/energy"][:3] == (Decimal(15), "billed", "regular")
    assert acc["acc/2026-03/energy/adj/2026-04"][:3] == (Decimal("-7.5"), "open", "adjustment")
    assert await records(pool, "new") == {"new/2026-03/energy": (Decimal("7.5"), "open", "regular", 1)}


async def test_the_sweep_closes_sessions_idle_past_their_deadline(pool: AsyncConnectionPool) -> None:
    pipeline, billing = wired(pool)
    reg = registry_for(pool, billing)
    await reg.upsert_account(account_id="acc", timezone="UTC")
    await reg.upsert_device(device_id="m1", profile_id="acme-em340")
    await reg.bind(device_id="m1", account_id="acc", valid_from=MAR)
    start = NOW - timedelta(minutes=10)
    await feed(pipeline, [reading("m1", i, start + timedelta(minutes=i), 10 * i) for i in range(3)])
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT closed_reason, expires_at FROM sessions WHERE account_id = 'acc'")
        (reason, expires), = await cur.fetchall()
    assert reason is None and expires is not None
    async with pool.connection() as conn, conn.transaction():
        assert await sweep_expired(billing.engine, conn, expires) == 0  # due strictly after the deadline
        assert await sweep_expired(billing.engine, conn, expires + timedelta(microseconds=1)) == 1
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT closed_reason FROM sessions WHERE account_id = 'acc'")
        assert [r[0] for r in await cur.fetchall()] == ["idle"]
        assert await sweep_expired(billing.engine, conn, expires + timedelta(days=1)) == 0
    assert (await records(pool, "acc"))["acc/2026-11/energy"][0] == Decimal("0.02")


_T0 = datetime(2026, 3, 28, tzinfo=UTC)
_hours = st.integers(min_value=0, max_value=24 * 8)


@settings(max_examples=150, deadline=None)
@given(spans=st.lists(st.tuples(_hours, st.integers(1, 90), st.integers(-5000, 5000)), min_size=1, max_size=12),
       first=st.one_of(st.none(), _hours), move=_hours)
def test_reallocation_equals_allocating_under_the_new_bindings(
        spans: list[tuple[int, int, int]], first: int | None, move: int) -> None:
    """Re-splitting stored pieces after a change at T == splitting the entries under the new bindings."""
    info = MeterInfo(service="s", product="p", aggregation=Aggregation.SUM)
    entries = [UsageEntry(device_id="d", meter="m", ts=_T0 + timedelta(hours=h + n), since=_T0 + timedelta(hours=h),
                          quantity=Decimal(q) / 7, cause=f"e{i}", kind=EntryKind.USAGE)
               for i, (h, n, q) in enumerate(spans)]
    at = _T0 + timedelta(hours=move)
    old = [Binding(device_id="d", account_id="a", valid_from=_T0 + timedelta(hours=first))] if first is not None \
        else []
    if old and old[0].valid_from >= at:
        old = []
    new = BindingIndex([*(Binding(device_id="d", account_id="a", valid_from=b.valid_from, valid_to=at)
                          for b in old), Binding(device_id="d", account_id="b", valid_from=at)])

    def zone_of(account: str | None) -> ZoneInfo:
        return ZONES.get(account or "", ZoneInfo("UTC"))

    stored = [(p, origin_of(e, "kWh")) for e in entries for p in allocate_entry(e, info, BindingIndex(old), zone_of)]
    moved = [(p, o) for p, o in stored if moved_by(p, at)]
    kept = [p for p, o in stored if (p, o) not in moved]
    result = sorted([*kept, *(p for p, _ in reallocate(moved, at, new, zone_of))], key=repr)
    direct = sorted([p for e in entries for p in allocate_entry(e, info, new, zone_of)], key=repr)
    assert result == direct


async def test_a_rebind_deletes_the_devices_points_through_the_device_index(pool: AsyncConnectionPool) -> None:
    """Migration 0053: plain storage keeps no index on point_id; rebind's delete names the device and instant."""
    rows = [(f"d{i % 40}", MAR + timedelta(hours=i)) for i in range(4000)]
    async with pool.connection() as conn:
        async with conn.cursor() as cur, cur.copy(
                "COPY session_points (account_id, service, device_id, product, kind, aggregation, start_ts, end_ts, "
                "value) FROM STDIN") as copy:
            for device, at in rows:
                await copy.write_row((None, "electricity", device, "energy", "usage", "sum", at, at, Decimal(1)))
        await conn.execute("ANALYZE session_points")
        since = MAR + timedelta(hours=3000)
        mine = [int(r[0]) for r in await (await conn.execute(
            "SELECT point_id FROM session_points WHERE device_id = 'd7' AND end_ts >= %s", (since,))).fetchall()]
        other = int((await (await conn.execute(  # a hostile id: another device's point, named with d7's
            "SELECT min(point_id) FROM session_points WHERE device_id = 'd8' AND end_ts >= %s", (since,)))
            .fetchone())[0])  # type: ignore[index]
        timescale = bool((await (await conn.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'session_points'::regclass "
            "AND tgname = 'session_points_rollup_delete')")).fetchone())[0])  # type: ignore[index]
        await conn.commit()
        stats = "SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables WHERE relname = 'session_points'"
        async with conn.transaction(force_rollback=True):
            before = await (await conn.execute(stats)).fetchone()
            deleted = await (await conn.execute("SELECT session_points_delete(%s::bigint[], 'd7', %s)",
                                                ([*mine, other], since))).fetchone()
            after = await (await conn.execute(stats)).fetchone()
            left = await (await conn.execute(
                "SELECT count(*) FILTER (WHERE device_id = 'd7' AND end_ts >= %s), "
                "count(*) FILTER (WHERE point_id = %s) FROM session_points", (since, other))).fetchone()
    assert len(mine) == 25
    assert deleted == (25,) and left == (0, 1)  # d8's point stays: the delete is bounded to the device
    assert before is not None and after is not None
    if not timescale:  # the hypertable keeps its key (point_id, start_ts) and scans its chunks its own way
        assert (after[0] - before[0], after[1] - before[1]) == (0, 1)  # one probe of the device's index, no scan
