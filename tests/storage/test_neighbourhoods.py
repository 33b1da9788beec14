"""The stored neighbours of late readings, read in SQL, equal the brute-force ones for any layout."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from usagehub.core.counters import Reading
from usagehub.storage.usage import stored_neighbourhoods

T0 = datetime(2026, 3, 2, tzinfo=UTC)
_devices = itertools.count()

# A register's readings: (slot, event id) pairs; two ids in one slot are two readings at one instant.
layouts = st.sets(st.tuples(st.integers(0, 40), st.sampled_from(["a", "b"])), max_size=30)


def _reading(slot: int, event_id: str) -> Reading:
    return Reading(ts=T0 + timedelta(minutes=15 * slot), value=Decimal(slot), event_id=f"{slot:03d}{event_id}")


def _expected(stored: list[Reading], batch: list[Reading], latest: Reading | None) -> list[tuple[datetime, str]]:
    """Each late reading's nearest stored reading on either side (the batch's own never), and the latest."""
    out = set()
    for r in batch:
        if latest is not None and r.key > latest.key:
            continue
        below = [s.key for s in stored if s.key < r.key]
        above = [s.key for s in stored if s.key > r.key]
        out |= {max(below)} if below else set()
        out |= {min(above)} if above else set()
    if latest is not None:
        out.add(latest.key)
    return sorted(out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=layouts, batch_slots=layouts, other=layouts)
async def test_neighbours_read_in_sql_are_the_nearest_stored_readings_of_each_late_one(
        pool: AsyncConnectionPool, before: set[tuple[int, str]], batch_slots: set[tuple[int, str]],
        other: set[tuple[int, str]]) -> None:
    """Random stored readings and a random batch (stored too, in the same transaction, as the pipeline does);
    a second register in the same call with its own layout: each gets exactly its own neighbours."""
    keys = [(f"nb-{next(_devices)}", "energy"), (f"nb-{next(_devices)}", "energy")]
    layouts_of = {keys[0]: (before, batch_slots), keys[1]: (other, batch_slots - other)}
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT ensure_event_partition(%s)", (T0.date().replace(day=1),))
        batches, latest, expected = {}, {}, {}
        for key, (stored_slots, new_slots) in layouts_of.items():
            stored = sorted((_reading(*s) for s in stored_slots - new_slots), key=lambda r: r.key)
            batch = sorted((_reading(*s) for s in new_slots), key=lambda r: r.key)
            for r in stored + batch:
                await conn.execute(
                    "INSERT INTO events (device_id, meter, ts, event_id, value, meta_id, received_at) VALUES "
                    "(%s, %s, %s, %s, %s, event_meta_id('kWh', 'cumulative', 'p', 'electricity'), now())",
                    (key[0], key[1], r.ts, r.event_id, r.value))
            if batch:
                batches[key] = batch
                if stored:
                    latest[key] = stored[-1]
                expected[key] = _expected(stored, batch, latest.get(key))
        got = await stored_neighbourhoods(conn, batches, latest)
    assert {k: [r.key for r in v] for k, v in got.items()} == expected
