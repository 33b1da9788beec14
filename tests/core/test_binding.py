"""Bindings are validity ranges [from, to): who holds a device at an instant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from usagehub.core.binding import Binding, BindingIndex
from usagehub.errors import DomainError

T = datetime(2026, 3, 10, 12, tzinfo=UTC)
H = timedelta(hours=1)


def test_rebinding_at_t_bills_the_new_account_from_t() -> None:
    index = BindingIndex([Binding(device_id="d1", account_id="old", valid_from=T - 10 * H, valid_to=T),
                          Binding(device_id="d1", account_id="new", valid_from=T)])
    assert index.account_at("d1", T - timedelta(microseconds=1)) == "old"
    assert index.account_at("d1", T) == "new"
    assert index.account_at("d1", T + 1000 * H) == "new"
    assert index.account_at("d1", T - 11 * H) is None
    assert index.changes_within("d1", T - 20 * H, T + H) == [T - 10 * H, T]
    assert index.changes_within("d1", T, T + H) == []


def test_gap_and_unknown_device_are_unbound() -> None:
    index = BindingIndex([Binding(device_id="d1", account_id="a", valid_from=T, valid_to=T + H),
                          Binding(device_id="d1", account_id="b", valid_from=T + 2 * H)])
    assert index.account_at("d1", T + 90 * timedelta(minutes=1)) is None
    assert index.account_at("nobody", T) is None
    assert [b.account_id for b in index.bindings_of("d1")] == ["a", "b"]
    assert index.bindings_of("nobody") == []


@pytest.mark.parametrize("second", [
    Binding(device_id="d1", account_id="b", valid_from=T + H),                       # inside an open range
    Binding(device_id="d1", account_id="b", valid_from=T - H, valid_to=T + H),       # straddles the start
])
def test_overlap_is_a_domain_error(second: Binding) -> None:
    with pytest.raises(DomainError) as err:
        BindingIndex([Binding(device_id="d1", account_id="a", valid_from=T), second])
    assert err.value.code == "BINDING_OVERLAP"


def test_touching_ranges_do_not_overlap() -> None:
    BindingIndex([Binding(device_id="d1", account_id="a", valid_from=T, valid_to=T + H),
                  Binding(device_id="d1", account_id="b", valid_from=T + H, valid_to=T + 2 * H)])


def test_empty_or_naive_ranges_are_refused() -> None:
    with pytest.raises(DomainError) as err:
        Binding(device_id="d1", account_id="a", valid_from=T, valid_to=T)
    assert err.value.code == "BINDING_EMPTY"
    with pytest.raises(ValueError, match="naive"):
        Binding(device_id="d1", account_id="a", valid_from=datetime(2026, 1, 1))
