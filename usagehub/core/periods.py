"""Billing periods (calendar months in an account's time zone) and the proportional split rule.

A period is the half-open UTC interval ``[start, end)`` between two local
midnights of the first of a month. Intervals of usage that cross a boundary are
split proportionally to time (see :func:`split_interval`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from functools import lru_cache
from itertools import pairwise
from zoneinfo import ZoneInfo

from usagehub.core.records import Record

#: Parts of a split are quantized to this quantum; the last part absorbs the remainder.
SPLIT_QUANTUM = Decimal("0.000000001")


def ensure_aware(ts: datetime) -> datetime:
    """``ts`` in UTC; a naive datetime is a programming error, never guessed."""
    if ts.tzinfo is UTC:  # the common case, as stored and decoded
        return ts
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"naive datetime {ts!r}: every time in usagehub carries a zone")
    return ts.astimezone(UTC)


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class Period:
    """One billing period: ``[start, end)`` in UTC, labelled by its local month (``2026-03``)."""

    start: datetime
    end: datetime
    label: str

    def contains(self, ts: datetime) -> bool:
        """Whether the instant ``ts`` lies in ``[start, end)``."""
        return self.start <= ts < self.end


def _month_start(year: int, month: int, zone: ZoneInfo) -> datetime:
    # fold=0 picks the first instant of the day both when local midnight is
    # repeated (fall back) and when it is skipped (spring forward at 00:00).
    return datetime(year, month, 1, tzinfo=zone).astimezone(UTC)


def _shift(year: int, month: int, by: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + by
    return index // 12, index % 12 + 1


@lru_cache(maxsize=4096)  # pure in its arguments; month boundaries are asked for again and again
def _period(year: int, month: int, zone: ZoneInfo) -> Period:
    ny, nm = _shift(year, month, 1)
    return Period(start=_month_start(year, month, zone), end=_month_start(ny, nm, zone),
                  label=f"{year:04d}-{month:02d}")


def period_of(ts: datetime, zone: ZoneInfo) -> Period:
    """The billing period of the instant ``ts`` for an account in ``zone``."""
    ts = ensure_aware(ts)
    local = ts.astimezone(zone)
    year, month = local.year, local.month
    # A transition that moves wall clocks back across midnight of the 1st could
    # put an instant's wall date in a neighbouring month (no zone in tzdata
    # 1970-2030 does); periods stay contiguous by testing the boundaries.
    for _ in range(3):
        period = _period(year, month, zone)
        if ts < period.start:  # pragma: no cover - see above
            year, month = _shift(year, month, -1)
        elif ts >= period.end:  # pragma: no cover - see above
            year, month = _shift(year, month, 1)
        else:
            return period
    raise AssertionError(f"no period found for {ts}")  # pragma: no cover - periods are contiguous


def next_period(period: Period, zone: ZoneInfo) -> Period:
    """The period that starts where ``period`` ends."""
    return period_of(period.end, zone)


_LAST: dict[ZoneInfo, Period] = {}  # the period last found per zone: consecutive readings share it


def boundaries_within(since: datetime, until: datetime, zone: ZoneInfo) -> list[datetime]:
    """Period starts strictly inside ``(since, until)``, in order."""
    period = _LAST.get(zone)
    if period is not None and period.start <= since and until <= period.end:
        return []
    cuts: list[datetime] = []
    period = _LAST[zone] = period_of(since, zone)
    while period.end < until:
        cuts.append(period.end)
        period = next_period(period, zone)
    return cuts


class Part(Record, frozen=True, kw_only=True):
    """A piece ``(start, end]`` of an interval of usage and the quantity it carries."""

    start: datetime
    end: datetime
    quantity: Decimal


def _micros(a: datetime, b: datetime) -> int:
    delta = b - a
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def split_interval(quantity: Decimal, since: datetime, until: datetime, cuts: Iterable[datetime],
                   *, quantum: Decimal = SPLIT_QUANTUM) -> list[Part]:
    """Split usage over ``(since, until]`` at ``cuts`` proportionally to time.

    The rule: each part gets ``quantity * its_duration / total_duration``
    quantized (half-even) to ``quantum``; the last part takes the remainder, so
    the parts always sum exactly to ``quantity``. The split is computed on the
    magnitude, so splitting ``-q`` gives exactly the negated parts of ``q`` (a
    retraction cancels its original). Cuts outside the open interval are ignored;
    a zero-length interval is one part.
    """
    inner = sorted({c for c in cuts if since < c < until})
    if not inner:
        return [Part(start=since, end=until, quantity=quantity)]
    edges: Sequence[datetime] = [since, *inner, until]
    total = _micros(since, until)
    magnitude, sign = abs(quantity), (-1 if quantity < 0 else 1)
    parts: list[Part] = []
    given = Decimal(0)
    for a, b in pairwise(edges[:-1]):
        share = (magnitude * _micros(a, b) / total).quantize(quantum, rounding=ROUND_HALF_EVEN)
        given += share
        parts.append(Part(start=a, end=b, quantity=sign * share))
    parts.append(Part(start=edges[-2], end=until, quantity=sign * (magnitude - given)))
    return parts
