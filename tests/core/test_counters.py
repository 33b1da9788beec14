"""Registers into usage entries: wrap, reset, late readings, arrival-order invariance."""

from __future__ import annotations

import itertools
import random
from bisect import bisect_left
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usagehub.core.counters import (
    CorrectionEvent,
    CounterSpec,
    EntryKind,
    Reading,
    UsageEntry,
    amend,
    apply_batch,
    reading_of,
    register_delta,
    simple_entry,
    wrap_modulus,
)
from usagehub.core.events import MeterKind, UsageEvent
from usagehub.errors import DomainError

T0 = datetime(2026, 3, 1, tzinfo=UTC)
M32 = Decimal(2**32)


def r(minute: int, value: int | str, marker: str | None = None, eid: str | None = None) -> Reading:
    return Reading(ts=T0 + timedelta(minutes=minute), value=Decimal(value),
                   event_id=eid or f"e{minute}", reset_marker=marker)


def spec(modulus: Decimal | None = M32, from_zero: bool = True) -> CounterSpec:
    return CounterSpec(device_id="d1", meter="energy", wrap_modulus=modulus, reset_from_zero=from_zero)


# --- register_delta -------------------------------------------------------------------------

def test_first_reading_is_a_baseline() -> None:
    assert register_delta(None, r(0, 500), wrap_modulus=M32) == 0


def test_rising_register_gives_the_difference() -> None:
    assert register_delta(r(0, 100), r(1, 130), wrap_modulus=M32) == 30


@pytest.mark.parametrize(("bits", "prev", "cur", "usage"), [
    (16, 65530, 4, 10),
    (32, 4294967290, 5, 11),
    (64, 2**64 - 1, 0, 1),
    (64, 2**64 - 100, 50, 150),
])
def test_wrap(bits: int, prev: int, cur: int, usage: int) -> None:
    modulus = wrap_modulus(bits, Decimal(1))
    assert register_delta(r(0, prev), r(1, cur), wrap_modulus=modulus) == usage


def test_wrap_of_a_scaled_register_uses_the_scaled_modulus() -> None:
    # Values are already scaled (Wh -> kWh): the modulus is 2**32 * 0.001.
    modulus = wrap_modulus(32, Decimal("0.001"))
    assert modulus == Decimal("4294967.296")
    assert register_delta(r(0, "4294967.290"), r(1, "0.005"), wrap_modulus=modulus) == Decimal("0.011")


def test_no_modulus_means_no_wrap() -> None:
    assert wrap_modulus(None, Decimal(1)) is None
    assert register_delta(r(0, 4294967290), r(1, 5), wrap_modulus=None) == 5  # a reset


def test_implausible_drop_is_a_reset() -> None:
    # A drop of less than half the modulus is not a wrap: the device restarted.
    assert register_delta(r(0, 1000), r(1, 10), wrap_modulus=M32) == 10
    assert register_delta(r(0, 1000), r(1, 10), wrap_modulus=M32, reset_from_zero=False) == 0


def test_reset_marker_change_starts_a_new_baseline() -> None:
    assert register_delta(r(0, 100, "boot1"), r(1, 120, "boot2"), wrap_modulus=M32) == 120
    assert register_delta(r(0, 100, "boot1"), r(1, 120, "boot2"), wrap_modulus=M32,
                          reset_from_zero=False) == 0
    assert register_delta(r(0, 100, "boot1"), r(1, 120, "boot1"), wrap_modulus=M32) == 20


def test_reset_by_marker_through_apply_batch() -> None:
    entries, _ = apply_batch([], [r(0, 100, "a"), r(1, 150, "a"), r(2, 7, "b"), r(3, 9, "b")], spec())
    assert [e.quantity for e in entries] == [50, 7, 2]


# --- amend / apply_batch ----------------------------------------------------------------------

def test_in_order_reading_gives_one_entry_attributed_at_the_later_time() -> None:
    [entry] = amend(r(0, 100), None, r(5, 130), spec())
    assert (entry.quantity, entry.ts, entry.since, entry.cause, entry.kind) == (
        Decimal(30), T0 + timedelta(minutes=5), T0, "e5", EntryKind.USAGE)


def test_late_reading_splits_the_delta_it_falls_into() -> None:
    # ThingsBoard #11090 credits the whole 100 to the late reading's neighbour; we split it.
    entries = amend(r(0, 0), r(20, 100), r(10, 30), spec())
    got = {(e.kind, e.since, e.ts, e.quantity) for e in entries}
    t = [T0 + timedelta(minutes=m) for m in (0, 10, 20)]
    assert got == {(EntryKind.USAGE, t[0], t[1], Decimal(30)),
                   (EntryKind.RETRACTION, t[0], t[2], Decimal(-100)),
                   (EntryKind.USAGE, t[1], t[2], Decimal(70))}
    assert all(e.cause == "e10" for e in entries)


def test_late_reading_across_a_wrap() -> None:
    entries = amend(r(0, 4294967290), r(20, 20), r(10, 4294967295), spec())
    assert sorted(e.quantity for e in entries) == [-26, 5, 21]


def test_late_reading_before_the_first_one() -> None:
    entries = amend(None, r(10, 100), r(0, 60), spec())
    assert [(e.since, e.quantity) for e in entries] == [(T0, Decimal(40))]


def test_duplicates_are_dropped() -> None:
    known = [r(0, 0), r(10, 10)]
    entries, added = apply_batch(known, [r(10, 10), r(20, 25), r(20, 25)], spec())
    assert [e.quantity for e in entries] == [15]
    assert [a.key for a in added] == [r(20, 25).key]


def test_same_instant_different_ids_are_ordered_by_id() -> None:
    entries, _ = apply_batch([], [r(0, 0), r(1, 8, eid="b"), r(1, 5, eid="a")], spec())
    net: defaultdict[tuple[object, object], Decimal] = defaultdict(Decimal)
    for e in entries:
        net[(e.since, e.ts)] += e.quantity
    assert {k: v for k, v in net.items() if v} == {(T0, T0 + timedelta(minutes=1)): 5,
                                                   (T0 + timedelta(minutes=1),) * 2: 3}


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        apply_batch([], [Reading(ts=datetime(2026, 1, 1), value=Decimal(1), event_id="x")], spec())


# --- invariance properties --------------------------------------------------------------------

def _truth(series: list[Reading], s: CounterSpec) -> dict[tuple[datetime, datetime], Decimal]:
    ordered = sorted({x.key: x for x in series}.values(), key=lambda x: x.key)
    out: defaultdict[tuple[datetime, datetime], Decimal] = defaultdict(Decimal)
    for a, b in itertools.pairwise(ordered):
        out[(a.ts, b.ts)] += register_delta(a, b, wrap_modulus=s.wrap_modulus)
    return {k: v for k, v in out.items() if v}


def _net(entries: list[UsageEntry]) -> dict[tuple[datetime, datetime], Decimal]:
    out: defaultdict[tuple[datetime, datetime], Decimal] = defaultdict(Decimal)
    for e in entries:
        assert e.since is not None
        out[(e.since, e.ts)] += e.quantity
    return {k: v for k, v in out.items() if v}


@st.composite
def register_series(draw: st.DrawFn) -> list[Reading]:
    bits = draw(st.sampled_from([16, 32]))
    modulus = 2**bits
    n = draw(st.integers(1, 25))
    minutes = sorted(draw(st.lists(st.integers(0, 600), min_size=n, max_size=n)))
    value, marker, out = draw(st.integers(0, modulus - 1)), "m0", []
    for i, minute in enumerate(minutes):
        step = draw(st.sampled_from(["up", "up", "up", "wrap", "drop", "marker"]))
        if step == "up":
            value = (value + draw(st.integers(0, modulus // 4))) % modulus
        elif step == "wrap":
            value = (value + draw(st.integers(modulus // 2, modulus - 1))) % modulus
        elif step == "drop":
            value = draw(st.integers(0, value))
        else:
            marker = f"m{i}"
        out.append(r(minute, value, marker, eid=f"id{i}"))
    return out


@settings(max_examples=150, deadline=None)
@given(series=register_series(), seed=st.integers(0, 2**32), dup=st.integers(0, 10),
       bits=st.sampled_from([16, 32]))
def test_entries_are_invariant_to_arrival_order_and_duplication(
        series: list[Reading], seed: int, dup: int, bits: int) -> None:
    s = spec(modulus=Decimal(2**bits))
    rng = random.Random(seed)
    arrivals = series + [rng.choice(series) for _ in range(dup)]
    rng.shuffle(arrivals)
    known: list[Reading] = []
    entries: list[UsageEntry] = []
    while arrivals:
        size = rng.randint(1, 5)
        batch, arrivals = arrivals[:size], arrivals[size:]
        got, added = apply_batch(_neighbours(known, batch), batch, s)
        entries.extend(got)
        known = sorted(known + added, key=lambda x: x.key)
    assert _net(entries) == _truth(series, s)
    assert sum(e.quantity for e in entries) == sum(_truth(series, s).values())


def _neighbours(known: list[Reading], batch: list[Reading]) -> list[Reading]:
    """What the lead loads: the latest stored reading plus the stored neighbours of each new one."""
    keys = [k.key for k in known]
    picked = {len(known) - 1} if known else set()
    for reading in batch:
        i = bisect_left(keys, reading.key)
        picked |= {j for j in (i - 1, i, i + 1) if 0 <= j < len(known)}
    return [known[j] for j in sorted(picked)]


# --- simple meters and corrections ------------------------------------------------------------

def _event(kind: MeterKind, value: str = "2.5", text: str | None = None) -> UsageEvent:
    return UsageEvent(device_id="d1", event_id="x1", meter="m", ts=T0, value=Decimal(value), unit="kWh",
                      kind=kind, profile_id="p", service="power", received_at=T0, reset_marker="b1",
                      text_value=text)


def test_simple_entries() -> None:
    delta = simple_entry(_event(MeterKind.DELTA))
    assert delta is not None and (delta.quantity, delta.since) == (Decimal("2.5"), None)
    event = simple_entry(_event(MeterKind.EVENT, text="card-7"))
    assert event is not None and (event.quantity, event.label) == (Decimal(1), "card-7")
    assert simple_entry(_event(MeterKind.GAUGE)) is None
    assert reading_of(_event(MeterKind.CUMULATIVE)) == Reading(ts=T0, value=Decimal("2.5"), event_id="x1",
                                                               reset_marker="b1")


def test_correction_is_an_entry_with_reason_and_author() -> None:
    correction = CorrectionEvent(correction_id="c1", device_id="d1", meter="energy", ts=T0,
                                 quantity=Decimal("-3"), reason="meter swap", author="ops@x")
    entry = correction.entry()
    assert (entry.kind, entry.quantity, entry.cause) == (EntryKind.CORRECTION, Decimal(-3), "c1")
    with pytest.raises(DomainError) as err:
        CorrectionEvent(correction_id="c2", device_id="d1", meter="energy", ts=T0, quantity=Decimal(1),
                        reason=" ", author="ops@x")
    assert err.value.code == "CORRECTION_UNEXPLAINED"
