"""Entries and events into account-bound points: rebinding at T, period splits, netting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from usagehub.core.allocation import (
    MeterInfo,
    PointKind,
    allocate_entry,
    by_account,
    event_point,
    is_active,
    net_points,
    utc_zone,
)
from usagehub.core.binding import Binding, BindingIndex
from usagehub.core.counters import EntryKind, UsageEntry
from usagehub.core.events import Aggregation, MeterKind, UsageEvent
from usagehub.core.profiles import MeterSpec

T = datetime(2026, 3, 10, 12, tzinfo=UTC)
H = timedelta(hours=1)
ENERGY = MeterInfo(service="power", product="energy", aggregation=Aggregation.SUM)
INDEX = BindingIndex([Binding(device_id="d1", account_id="old", valid_from=T - 100 * H, valid_to=T),
                      Binding(device_id="d1", account_id="new", valid_from=T)])


def entry(since: datetime | None, ts: datetime, quantity: str,
          kind: EntryKind = EntryKind.USAGE) -> UsageEntry:
    return UsageEntry(device_id="d1", meter="energy", ts=ts, since=since, quantity=Decimal(quantity),
                      cause="e", kind=kind)


def test_rebinding_at_t_splits_a_delta_that_spans_t() -> None:
    points = allocate_entry(entry(T - 3 * H, T + H, "8"), ENERGY, INDEX)
    assert [(p.account_id, p.start, p.end, p.value) for p in points] == [
        ("old", T - 3 * H, T, Decimal("6.000000000")), ("new", T, T + H, Decimal("2.000000000"))]
    # An instantaneous entry at T belongs to the new account, just before T to the old one.
    assert allocate_entry(entry(None, T, "1"), ENERGY, INDEX)[0].account_id == "new"
    assert allocate_entry(entry(None, T - timedelta(seconds=1), "1"), ENERGY, INDEX)[0].account_id == "old"
    # A delta ending exactly at T is usage before T.
    assert allocate_entry(entry(T - H, T, "1"), ENERGY, INDEX)[0].account_id == "old"


def test_unbound_usage_is_kept_with_no_account() -> None:
    [point] = allocate_entry(entry(None, T - 200 * H, "5"), ENERGY, INDEX)
    assert point.account_id is None and point.value == 5
    assert set(by_account([point])) == {(None, "power")}


def test_period_split_uses_the_accounts_zone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    index = BindingIndex([Binding(device_id="d1", account_id="a", valid_from=T - 1000 * H)])
    start, end = datetime(2026, 3, 31, 20, tzinfo=UTC), datetime(2026, 4, 1, 2, tzinfo=UTC)
    points = allocate_entry(entry(start, end, "6"), ENERGY, index, zone_of=lambda _a: berlin)
    assert [(p.start, p.value) for p in points] == [
        (start, Decimal("2.000000000")), (datetime(2026, 3, 31, 22, tzinfo=UTC), Decimal("4.000000000"))]
    assert len(allocate_entry(entry(start, end, "6"), ENERGY, index, zone_of=utc_zone)) == 2


def test_retraction_cancels_its_original_after_netting() -> None:
    original = allocate_entry(entry(T - 3 * H, T + H, "8"), ENERGY, INDEX)
    retraction = allocate_entry(entry(T - 3 * H, T + H, "-8", EntryKind.RETRACTION), ENERGY, INDEX)
    late = allocate_entry(entry(T - 3 * H, T - 2 * H, "1"), ENERGY, INDEX)
    netted = net_points(original + retraction + late)
    assert sorted(p.value for p in netted) == [0, 0, 1]


def _event(kind: MeterKind, value: str, text: str | None = None) -> UsageEvent:
    return UsageEvent(device_id="d1", event_id="x", meter="armed", ts=T, value=Decimal(value), unit="",
                      kind=kind, profile_id="p", service="alarm", received_at=T, text_value=text)


def test_state_and_gauge_points() -> None:
    spec = MeterSpec(kind=MeterKind.STATE, unit="", aggregation=Aggregation.DURATION, value="$.s",
                     product="armed-time")
    info = MeterInfo.of("armed", spec, "alarm")
    assert info.product == "armed-time" and "true" in info.active_values
    on = event_point(_event(MeterKind.STATE, "0", "ARMED"), info, INDEX, state=True)
    assert (on.kind, on.active, on.value, on.account_id) == (PointKind.STATE, True, Decimal(1), "new")
    off = event_point(_event(MeterKind.STATE, "0", "disarmed"), info, INDEX, state=True)
    assert (off.active, off.value) == (False, Decimal(0))
    assert is_active(_event(MeterKind.STATE, "1.0"), info.active_values)
    g = event_point(_event(MeterKind.GAUGE, "3.5"), ENERGY, INDEX, state=False)
    assert (g.kind, g.value, g.active) == (PointKind.GAUGE, Decimal("3.5"), None)
    assert net_points([g, g]) == [g]  # the same event counts once
