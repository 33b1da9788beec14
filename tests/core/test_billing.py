"""Billing records: amend while open or closed, adjust once billed; billed + adjustments == truth."""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usagehub.core.aggregation import Partial
from usagehub.core.allocation import MeterInfo, Point, allocate_entry, by_account
from usagehub.core.billing import (
    BillingRecord,
    RecordKind,
    RecordStatus,
    TruthKey,
    amend_record,
    bill,
    billed_total,
    close_records,
    reconcile,
    sessions_behind,
    truth_from_sessions,
)
from usagehub.core.binding import Binding, BindingIndex
from usagehub.core.counters import CounterSpec, Reading, UsageEntry, apply_batch
from usagehub.core.events import Aggregation
from usagehub.core.periods import Period, period_of
from usagehub.core.sessions import Resume, Session, SessionRules, sessionize
from usagehub.errors import DomainError

UTCZ = ZoneInfo("UTC")
JAN, FEB, MAR = (period_of(datetime(2026, m, 5, tzinfo=UTC), UTCZ) for m in (1, 2, 3))
UNITS = {"energy": "kWh"}


class Store:
    """Records by id, the way storage upserts them; remembers every billed version."""

    def __init__(self) -> None:
        self.records: dict[str, BillingRecord] = {}
        self.billed: dict[str, BillingRecord] = {}

    def write(self, changes: list[BillingRecord]) -> None:
        for record in changes:
            assert record.record_id not in self.billed, f"billed record {record.record_id} edited"
            old = self.records.get(record.record_id)
            assert old is None or record.version == old.version + 1
            self.records[record.record_id] = record
            if record.status is RecordStatus.BILLED:
                self.billed[record.record_id] = record

    def sync(self, truth: dict[TruthKey, Decimal], as_of: datetime) -> None:
        self.write(reconcile(truth, list(self.records.values()), units=UNITS,
                             open_period_of=lambda _a: period_of(as_of, UTCZ)))

    def run(self, as_of: datetime) -> None:
        self.write(close_records(self.records.values(), as_of))
        self.write(bill(self.records.values()))


def test_lifecycle_amend_then_adjust() -> None:
    store = Store()
    key = ("acc", JAN, "energy")
    store.sync({key: Decimal(10)}, as_of=JAN.start + timedelta(days=3))
    [record] = store.records.values()
    assert (record.status, record.kind, record.quantity, record.unit) == (
        RecordStatus.OPEN, RecordKind.REGULAR, Decimal(10), "kWh")
    store.sync({key: Decimal(12)}, as_of=JAN.start + timedelta(days=4))  # open: amended
    store.write(close_records(store.records.values(), FEB.start))
    store.sync({key: Decimal(13)}, as_of=FEB.start)                     # closed: amended
    assert store.records[record.record_id].quantity == 13
    assert store.records[record.record_id].version == 4
    store.run(FEB.start + timedelta(days=1))
    assert store.records[record.record_id].status is RecordStatus.BILLED
    store.sync({key: Decimal(15)}, as_of=FEB.start + timedelta(days=2))  # billed: adjustment in Feb
    adjustment = store.records[f"{record.record_id}/adj/2026-02"]
    assert (adjustment.kind, adjustment.period, adjustment.quantity, adjustment.adjusts) == (
        RecordKind.ADJUSTMENT, FEB, Decimal(2), record.record_id)
    store.sync({key: Decimal(14)}, as_of=FEB.start + timedelta(days=3))  # pending adjustment amended
    assert store.records[adjustment.record_id].quantity == 1
    store.run(MAR.start)
    store.sync({key: Decimal(20)}, as_of=MAR.start + timedelta(days=1))  # a new adjustment in March
    assert store.records[f"{record.record_id}/adj/2026-03"].quantity == 6
    assert billed_total(store.records.values()) == {key: Decimal(20)}
    store.sync({key: Decimal(20)}, as_of=MAR.start + timedelta(days=1))  # nothing to do
    store.sync({}, as_of=MAR.start + timedelta(days=1))                  # truth gone: adjust to zero
    assert billed_total(store.records.values()) == {key: Decimal(0)}


def test_no_record_for_zero_truth_and_billed_is_final() -> None:
    assert reconcile({("a", JAN, "energy"): Decimal(0)}, [], units=UNITS, open_period_of=lambda _a: FEB) == []
    billed = BillingRecord(record_id="r", account_id="a", period=JAN, product="energy", quantity=Decimal(1),
                           unit="kWh", status=RecordStatus.BILLED)
    with pytest.raises(DomainError) as refused:
        amend_record(billed, Decimal(3))
    assert refused.value.code == "RECORD_BILLED"
    with pytest.raises(DomainError) as err:
        reconcile({billed.key: Decimal(2)}, [billed], units=UNITS, open_period_of=lambda _a: JAN)
    assert err.value.code == "ADJUSTMENT_PERIOD"


def test_scope_limits_what_missing_truth_means() -> None:
    jan, feb = (BillingRecord(record_id=p.label, account_id="a", period=p, product="energy",
                              quantity=Decimal(5), unit="kWh") for p in (JAN, FEB))
    changes = reconcile({("a", FEB, "energy"): Decimal(6), ("a", JAN, "energy"): Decimal(1)}, [jan, feb],
                        units=UNITS, open_period_of=lambda _a: FEB, scope=[("a", FEB)])
    assert [(r.record_id, r.quantity) for r in changes] == [("2026-02", Decimal(6))]  # January untouched
    unscoped = reconcile({}, [jan, feb], units=UNITS, open_period_of=lambda _a: FEB)
    assert [r.quantity for r in unscoped] == [0, 0]


def _session(period: Period, value: str, start: datetime) -> Session:
    partial = Partial(aggregation=Aggregation.MAX, count=1, maximum=Decimal(value))
    return Session(account_id="a", service="power", period=period, start=start, end=start, closed_reason=None,
                   activity_count=1, devices=frozenset({"d"}), partials={"peak": partial},
                   resume=Resume(key=(start, 1, start, "", "", "", "")))


def test_truth_merges_session_partials_per_period() -> None:
    sessions = [_session(JAN, "3", JAN.start), _session(JAN, "7", JAN.start + timedelta(days=2)),
                _session(FEB, "1", FEB.start)]
    assert truth_from_sessions(sessions) == {("a", JAN, "peak"): Decimal(7), ("a", FEB, "peak"): Decimal(1)}
    empty = Session(account_id="a", service="s", period=JAN, start=JAN.start, end=JAN.start,
                    closed_reason=None, activity_count=0, devices=frozenset(),
                    partials={"avg": Partial(aggregation=Aggregation.AVG)},
                    resume=Resume(key=(JAN.start, 1, JAN.start, "", "", "", "")))
    assert truth_from_sessions([empty]) == {}
    record = BillingRecord(record_id="r", account_id="a", period=JAN, product="peak", quantity=Decimal(7),
                           unit="kW")
    assert sessions_behind(record, sessions) == sessions[:2]


# --- billed + adjustments == truth, whatever the sequence -------------------------------------

ops = st.lists(st.one_of(
    st.tuples(st.just("event"), st.sampled_from(["a", "b"]), st.integers(0, 3), st.integers(-5, 9)),
    st.tuples(st.just("run"), st.just(""), st.integers(0, 3), st.just(0))), max_size=40)


@settings(max_examples=200, deadline=None)
@given(operations=ops)
def test_billed_plus_adjustments_equals_truth(operations: list[tuple[str, str, int, int]]) -> None:
    periods = [period_of(datetime(2026, m, 5, tzinfo=UTC), UTCZ) for m in range(1, 6)]
    store, clock = Store(), 0
    truth: defaultdict[TruthKey, Decimal] = defaultdict(Decimal)
    for op, account, month, amount in operations:
        if op == "run":
            clock = max(clock, month + 1)  # billing runs move forward in time
            store.run(periods[clock].start)
        else:
            truth[(account, periods[month], "energy")] += amount
        store.sync(dict(truth), as_of=periods[clock].start)
        assert {k: v for k, v in billed_total(store.records.values()).items() if v} == {
            k: v for k, v in truth.items() if v}


# --- end to end: readings in any order, billing runs in between -------------------------------

BERLIN = ZoneInfo("Europe/Berlin")
START = datetime(2026, 1, 1, tzinfo=UTC)
REBIND = datetime(2026, 2, 14, 9, tzinfo=UTC)
INDEX = BindingIndex([Binding(device_id="m1", account_id="a", valid_from=START - timedelta(days=1),
                              valid_to=REBIND),
                      Binding(device_id="m1", account_id="b", valid_from=REBIND)])
INFO = MeterInfo(service="power", product="energy", aggregation=Aggregation.SUM)
RULES = SessionRules(idle_timeout=timedelta(hours=6), zone=BERLIN)
SPEC = CounterSpec(device_id="m1", meter="energy", wrap_modulus=Decimal(2**16))


def _truth(entries: list[UsageEntry], as_of: datetime) -> dict[TruthKey, Decimal]:
    points: list[Point] = [p for e in entries
                           for p in allocate_entry(e, INFO, INDEX, zone_of=lambda _a: BERLIN)]
    sessions = [s for (account, service), pts in by_account(points).items() if account is not None
                for s in sessionize(pts, account_id=account, service=service, rules=RULES, as_of=as_of)]
    return truth_from_sessions(sessions)


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.integers(0, 2**16 // 3), min_size=2, max_size=40), seed=st.integers(0, 2**32))
def test_late_readings_and_billing_runs_end_in_the_truth(steps: list[int], seed: int) -> None:
    rng = random.Random(seed)
    times = sorted(rng.sample(range(0, 120 * 24), len(steps)))  # hours over four months
    value, series = 0, []
    for i, (hour, step) in enumerate(zip(times, steps, strict=True)):
        value = (value + step) % 2**16
        series.append(Reading(ts=START + timedelta(hours=hour), value=Decimal(value), event_id=f"r{i}"))
    arrivals = series + rng.sample(series, k=min(3, len(series)))
    rng.shuffle(arrivals)
    store = Store()
    known: list[Reading] = []
    entries: list[UsageEntry] = []
    for i, reading in enumerate(arrivals):
        got, added = apply_batch(known, [reading], SPEC)
        known = sorted(known + added, key=lambda r: r.key)
        entries += got
        as_of = START + timedelta(days=30 * i * 5 // len(arrivals))
        store.sync(_truth(entries, as_of), as_of)
        if rng.random() < 0.3:
            store.run(as_of)
    final_as_of = START + timedelta(days=200)
    truth = _truth(apply_batch([], sorted(series, key=lambda r: r.key), SPEC)[0], final_as_of)
    store.sync(_truth(entries, final_as_of), final_as_of)
    assert {k: v for k, v in billed_total(store.records.values()).items() if v} == {
        k: v for k, v in truth.items() if v}
    assert sum(truth.values()) == sum(
        int(b.value - a.value) % 2**16 for a, b in itertools.pairwise(series))
