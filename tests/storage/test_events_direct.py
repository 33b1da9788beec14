"""Events copied straight into ``events``: the same new identities as the staged insert, whoever stored first."""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec.structs import replace
from psycopg_pool import AsyncConnectionPool

from usagehub import metrics
from usagehub.core.events import MeterKind, UsageEvent
from usagehub.storage.events import EventKey, copy_numeric, event_key, insert_events
from usagehub.storage.events_direct import DirectInserts

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DESCRIBED = ("SELECT device_id, meter, ts, event_id, value, unit, kind, profile_id, service, received_at, "
             "reset_marker, text_value FROM events_described ORDER BY device_id, meter, ts, event_id")


def _event(device: str, n: int, *, profile: str = "acme-em340", value: Decimal | None = None) -> UsageEvent:
    return UsageEvent(device_id=device, event_id=str(n), meter="energy", ts=T0 + timedelta(minutes=15 * n),
                      value=Decimal(n) / 8 if value is None else value, unit="kWh", kind=MeterKind.CUMULATIVE,
                      profile_id=profile, service="electricity", received_at=T0 + timedelta(minutes=15 * n, seconds=2),
                      reset_marker="boot-1" if n % 5 == 2 else None, text_value=None)


def _fallbacks() -> float:
    return metrics.EVENT_INSERT_FALLBACKS._value.get()


async def _batch(pool: AsyncConnectionPool, inserts: DirectInserts, events: list[UsageEvent]) -> set[EventKey]:
    async with pool.connection() as conn, conn.transaction():
        new = await inserts.insert(conn, events)
    inserts.committed(new)  # as the pipeline does, after the commit
    return new


async def _stored(pool: AsyncConnectionPool) -> list[tuple[object, ...]]:
    async with pool.connection() as conn:
        return await (await conn.execute(DESCRIBED)).fetchall()


async def test_copies_within_a_batch_and_of_recent_batches_never_reach_the_database(pool: AsyncConnectionPool) -> None:
    inserts = DirectInserts()
    first = [_event("m1", n) for n in range(6)]
    before = _fallbacks()
    # the first claim of an identity wins, as in the staged insert: the later copy's value is not stored
    assert await _batch(pool, inserts, [*first, replace(first[2], value=Decimal(99))]) == {event_key(e) for e in first}
    later = [_event("m1", n) for n in range(6, 9)]
    assert await _batch(pool, inserts, [first[0], *later, first[5]]) == {event_key(e) for e in later}
    assert _fallbacks() == before  # both went straight in
    stored = await _stored(pool)
    assert [r[3] for r in stored] == [str(n) for n in range(9)]
    assert stored[2][4] == Decimal(2) / 8
    assert await _batch(pool, inserts, [first[1], later[0]]) == set()


async def test_an_identity_stored_by_another_process_falls_back_to_the_staged_insert(pool: AsyncConnectionPool) -> None:
    ours, theirs = DirectInserts(), DirectInserts()  # two processes: each knows only what it committed
    stored_by_them = [_event("m2", n) for n in range(4)]
    assert await _batch(pool, theirs, stored_by_them) == {event_key(e) for e in stored_by_them}
    before = _fallbacks()
    mixed = [stored_by_them[3], _event("m2", 4), _event("m3", 0)]
    assert await _batch(pool, ours, mixed) == {event_key(mixed[1]), event_key(mixed[2])}
    assert _fallbacks() == before + 1
    assert len(await _stored(pool)) == 6
    # a process that forgot (only the newest identities are kept) still stores nothing twice
    small = DirectInserts(keep=2)
    fresh = [_event("m4", n) for n in range(5)]
    assert await _batch(pool, small, fresh[:3]) == {event_key(e) for e in fresh[:3]}
    assert await _batch(pool, small, fresh[3:]) == {event_key(e) for e in fresh[3:]}  # the two kept now
    assert await _batch(pool, small, [fresh[0], _event("m4", 5)]) == {event_key(_event("m4", 5))}
    assert _fallbacks() == before + 2


async def test_a_new_description_is_added_by_the_staged_insert_then_copied(pool: AsyncConnectionPool) -> None:
    inserts = DirectInserts()
    before = _fallbacks()
    assert await _batch(pool, inserts, [_event("m5", 0, profile="brand-new")]) == {event_key(_event("m5", 0))}
    assert await _batch(pool, inserts, [_event("m5", 1, profile="brand-new")]) == {event_key(_event("m5", 1))}
    rows = await _stored(pool)
    assert [(r[3], r[7]) for r in rows if r[0] == "m5"] == [("0", "brand-new"), ("1", "brand-new")]
    assert _fallbacks() == before  # a missing description is not a conflict


async def test_a_rolled_back_batch_is_not_remembered(pool: AsyncConnectionPool) -> None:
    inserts = DirectInserts()
    events = [_event("m6", n) for n in range(3)]
    async with pool.connection() as conn, conn.transaction(force_rollback=True):
        assert await inserts.insert(conn, events) == {event_key(e) for e in events}
    assert await _batch(pool, inserts, events) == {event_key(e) for e in events}  # stored now, once
    assert len([r for r in await _stored(pool) if r[0] == "m6"]) == 3


batches = st.lists(st.lists(st.tuples(st.sampled_from(["d1", "d2"]), st.integers(0, 12)), max_size=12),
                   min_size=1, max_size=6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=batches, who=st.lists(st.booleans(), min_size=6, max_size=6), keep=st.sampled_from([1, 4, 100]))
async def test_new_identities_are_what_the_staged_insert_finds(
        pool: AsyncConnectionPool, batches: list[list[tuple[str, int]]], who: list[bool], keep: int) -> None:
    # Two processes (or a process and the staged insert alone) write batches with copies inside and across
    # batches; each batch's new identities are exactly those never stored before, and each is stored once.
    run = f"r{uuid.uuid4().hex[:8]}-"
    a, b = DirectInserts(keep=keep), DirectInserts(keep=keep)
    seen: set[EventKey] = set()
    for i, batch in enumerate(batches):
        events = [_event(run + dev, n) for dev, n in batch]
        expected = {event_key(e) for e in events} - seen
        if i % 3 == 2:  # the staged insert alone, as before this module
            async with pool.connection() as conn, conn.transaction():
                got = await insert_events(conn, events)
        else:
            got = await _batch(pool, a if who[i] else b, events)
        assert got == expected
        seen |= expected
    async with pool.connection() as conn:
        # events_rows: on TimescaleDB a canonical integer id is stored as event_seq (migration 0044)
        rows = await (await conn.execute("SELECT device_id, meter, ts, event_id FROM events_rows "
                                         "WHERE device_id LIKE %s", (run + "%",))).fetchall()
    assert sorted(rows) == sorted(seen)


async def test_an_identity_in_a_compressed_chunk_is_found_too(pool: AsyncConnectionPool) -> None:
    # On TimescaleDB the copy must meet an identity kept in a compressed chunk (a days-late resend after
    # a restart); on plain PostgreSQL the same batch meets it in the heap.
    old = [_event("m7", n) for n in range(8)]
    assert await _batch(pool, DirectInserts(), old) == {event_key(e) for e in old}
    async with pool.connection() as conn:
        timescale = await (await conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")
                           ).fetchone()
        if timescale and timescale[0]:
            for (chunk,) in await (await conn.execute("SELECT c::text FROM show_chunks('events') c")).fetchall():
                with contextlib.suppress(psycopg.errors.DuplicateObject):  # the policy's job may be first
                    async with conn.transaction():
                        await conn.execute("SELECT events_compress_chunk(%s::regclass)", (chunk,))
            done = await (await conn.execute("SELECT bool_and(is_compressed) FROM timescaledb_information.chunks "
                                             "WHERE hypertable_name = 'events'")).fetchone()
            assert done is not None and done[0] is True
    before = _fallbacks()
    resent = [old[3], _event("m7", 8), old[6]]
    assert await _batch(pool, DirectInserts(), resent) == {event_key(resent[1])}
    assert _fallbacks() == before + 1
    assert [r[3] for r in await _stored(pool) if r[0] == "m7"] == [str(n) for n in range(9)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.one_of(
    st.decimals(min_value=-10**22, max_value=10**22, allow_nan=False, allow_infinity=False),
    st.sampled_from([Decimal("1E+3"), Decimal("5.0"), Decimal("-0"), Decimal("1.000"), Decimal(10**20),
                     Decimal(9999), Decimal(10000), Decimal("0E-7")])), min_size=1, max_size=8))
async def test_a_whole_value_copied_as_an_int_is_the_numeric_the_decimal_is(
        pool: AsyncConnectionPool, values: list[Decimal]) -> None:
    # The copies pass values of exponent 0 as ints (storage.events.WHOLE); what is stored, value and display
    # scale, is what PostgreSQL makes of the Decimal itself, through either insert.
    assert all((type(copy_numeric(v)) is int) == (v.as_tuple().exponent == 0) for v in values)
    run = f"v{uuid.uuid4().hex[:8]}"
    direct = [_event(run + "-d", n, value=v) for n, v in enumerate(values)]
    staged = [_event(run + "-s", n, value=v) for n, v in enumerate(values)]
    async with pool.connection() as conn:
        async with conn.transaction():
            await DirectInserts().insert(conn, direct)
            await insert_events(conn, staged)
        expected = [(await (await conn.execute("SELECT %b::numeric::text", [v])).fetchone() or ("?",))[0]
                    for v in values]
        for device in (run + "-d", run + "-s"):
            rows = await (await conn.execute("SELECT value::text FROM events WHERE device_id = %s ORDER BY ts",
                                             (device,))).fetchall()
            assert [r[0] for r in rows] == expected
