"""Tier arithmetic: how a quantity range splits across graduated bands, which band a volume reaches.

Band ``i`` covers the cumulative quantity (up_to[i-1], up_to[i]]; the first band
extends down (a negative correction un-fills it), the last one up without limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from usagehub.core.money import decimal_text
from usagehub.core.tariffs import Tier


@dataclass(frozen=True, slots=True, kw_only=True)
class TierSlice:
    """A quantity priced in band ``index`` (0-based) at ``price``."""

    index: int
    label: str
    price: Decimal
    quantity: Decimal


def tier_label(tiers: Sequence[Tier], index: int) -> str:
    """A readable band name: ``tier 2 (100-500)``, ``tier 3 (500+)``."""
    low = decimal_text(tiers[index - 1].up_to or Decimal(0)) if index else "0"
    high = tiers[index].up_to
    span = f"{low}+" if high is None else f"{low}-{decimal_text(high)}"
    return f"tier {index + 1} ({span})"


def _clamp(tiers: Sequence[Tier], index: int, value: Decimal) -> Decimal:
    high = tiers[index].up_to
    if index:
        low = tiers[index - 1].up_to
        assert low is not None   # validated: only the last band is open
        value = max(value, low)
    return value if high is None else min(value, high)


def band_of(tiers: Sequence[Tier], cumulative: Decimal) -> int:
    """The band that cumulative quantity ``cumulative`` lies in (upper bounds inclusive)."""
    for index, tier in enumerate(tiers):
        if tier.up_to is None or cumulative <= tier.up_to:
            return index
    return len(tiers) - 1   # unreachable: the last band is open


def graduated_split(tiers: Sequence[Tier], start: Decimal, end: Decimal) -> list[tuple[int, Decimal]]:
    """(band, quantity) for each band that moving the cumulative quantity from ``start`` to ``end`` touches.

    Slices telescope: the slices of a->b plus those of b->c equal those of a->c,
    which is why item order inside a period cannot change the total.
    """
    low, high = (start, end) if start <= end else (end, start)
    first, last = band_of(tiers, low), band_of(tiers, high)
    if first == last:   # the common case: one band, no clamping needed
        return [(first, end - start)] if end != start else []
    split = []
    for index in range(first, last + 1):
        quantity = _clamp(tiers, index, end) - _clamp(tiers, index, start)
        if quantity:
            split.append((index, quantity))
    return split


def volume_band(tiers: Sequence[Tier], total: Decimal) -> TierSlice:
    """The band (and price) the period's total quantity reaches; every unit pays it."""
    index = band_of(tiers, total)
    return TierSlice(index=index, label=tier_label(tiers, index), price=tiers[index].price, quantity=total)
