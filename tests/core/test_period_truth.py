"""Kept per-period partials (core.billing.fold_partials): folding rewritten sessions equals the full recompute."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from usagehub.core.aggregation import Partial, Sample, merge_all
from usagehub.core.billing import fold_partials, kept_partial
from usagehub.core.events import Aggregation

T0 = datetime(2026, 10, 1, tzinfo=UTC)
PRODUCTS = {f"p-{a.value}": a for a in Aggregation}


@st.composite
def session_partials(draw: st.DrawFn) -> dict[str, Partial]:
    """One session's partials: some products, a few samples each (small values: ties and equal extremes)."""
    out: dict[str, Partial] = {}
    for product in draw(st.sets(st.sampled_from(sorted(PRODUCTS)), min_size=1)):
        agg = PRODUCTS[product]
        samples = draw(st.lists(st.builds(
            Sample, at=st.integers(0, 20).map(lambda m: T0 + timedelta(minutes=m)),
            value=st.integers(-3, 5).map(Decimal), label=st.sampled_from([None, "u1", "u2", "u3"])), max_size=4))
        seconds = Decimal(draw(st.integers(0, 100)))
        out[product] = Partial.of(agg, samples, seconds)
    return out


def _results(sessions: list[dict[str, Partial]]) -> dict[str, Decimal]:
    """What truth_from_sessions bills per product (a missing or undefined value bills 0)."""
    out: dict[str, Decimal] = {}
    for product, agg in PRODUCTS.items():
        items = [s[product] for s in sessions if product in s]
        value = merge_all(items, agg).result() if items else None
        out[product] = Decimal(0) if value is None else value
    return out


def _kept(sessions: list[dict[str, Partial]]) -> dict[str, Partial]:
    out: dict[str, Partial] = {}
    for s in sessions:
        for product, p in s.items():
            part = kept_partial(p)
            out[product] = out[product].merge(part) if product in out else part
    return out


@settings(max_examples=80, deadline=None)
@given(st.lists(session_partials(), max_size=6), st.data())
def test_folding_removed_and_added_sessions_equals_the_full_recompute(
        stored: list[dict[str, Partial]], data: st.DataObject) -> None:
    removed_idx = data.draw(st.sets(st.integers(0, max(len(stored) - 1, 0))) if stored else st.just(set()))
    added = data.draw(st.lists(session_partials(), max_size=3))
    removed = [stored[i] for i in sorted(removed_idx)]
    after = [s for i, s in enumerate(stored) if i not in removed_idx] + added
    folded = fold_partials(_kept(stored), removed, added)
    if folded is None:  # an extreme left with the removed sessions: the caller re-reads the period
        return
    got = {p: (Decimal(0) if (v := folded[p].result()) is None else v) if p in folded else Decimal(0)
           for p in PRODUCTS}
    assert got == _results(after)
    # Count, total and seconds are folded exactly, whatever the aggregation: never a re-read for those.
    for product, part in folded.items():
        items = [s[product] for s in after if product in s]
        assert (part.count, part.total, part.seconds) == (
            sum(p.count for p in items), sum((p.total for p in items), Decimal(0)),
            sum((p.seconds for p in items), Decimal(0)))


@settings(max_examples=40, deadline=None)
@given(st.lists(session_partials(), min_size=1, max_size=6), session_partials())
def test_an_open_session_rewritten_with_more_points_never_needs_a_reread(
        stored: list[dict[str, Partial]], more: dict[str, Partial]) -> None:
    # The common rewrite: the open (last) session, replayed with new points, replaces its stored version.
    old = stored[-1]
    grown = {p: old[p].merge(more[p]) if p in more and p in old else old.get(p) or more[p] for p in old.keys() | more}
    folded = fold_partials(_kept(stored), [old], [grown])
    assert folded is not None
    assert {p: (Decimal(0) if (v := folded[p].result()) is None else v) for p in PRODUCTS if p in folded} == {
        p: v for p, v in _results([*stored[:-1], grown]).items() if p in folded}


def test_removing_the_session_that_held_the_maximum_asks_for_a_reread() -> None:
    agg = Aggregation.MAX
    a = {"kw": Partial.of(agg, [Sample(at=T0, value=Decimal(9))])}
    b = {"kw": Partial.of(agg, [Sample(at=T0, value=Decimal(4))])}
    smaller = {"kw": Partial.of(agg, [Sample(at=T0, value=Decimal(5))])}
    assert fold_partials(_kept([a, b]), [a], [smaller]) is None
    folded = fold_partials(_kept([a, b]), [b], [smaller])  # the maximum stays: folded exactly
    assert folded is not None and folded["kw"].result() == Decimal(9)
    summed = {"kwh": Partial.of(Aggregation.SUM, [Sample(at=T0, value=Decimal("1.5"))])}
    folded = fold_partials(_kept([summed, a]), [summed], [])
    assert folded is not None and folded["kwh"].result() == Decimal(0) and folded["kw"].result() == Decimal(9)
