"""Billing periods in an account's time zone, cut into segments at local dates where prices change."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from usagehub.errors import DomainError


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (DomainError ``UNKNOWN_TIMEZONE`` if there is none)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise DomainError("UNKNOWN_TIMEZONE", f"unknown time zone {name!r}") from None


def require_aware(value: datetime, what: str) -> datetime:
    """``value`` if it carries a UTC offset, else DomainError ``NAIVE_DATETIME``."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise DomainError("NAIVE_DATETIME", f"{what} must carry a time zone")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class BillingPeriod:
    """The half-open interval [start, end) an invoice covers (aware; usually local midnights)."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        require_aware(self.start, "period start")
        require_aware(self.end, "period end")
        if self.start >= self.end:
            raise DomainError("EMPTY_PERIOD", "a billing period must end after it starts")

    def contains(self, ts: datetime) -> bool:
        """Whether instant ``ts`` lies in [start, end)."""
        return self.start <= ts < self.end


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    """A slice [start, end) of a period with one set of prices, and the local days charged to it."""

    start: datetime
    end: datetime
    days: tuple[date, ...]

    @property
    def first_day(self) -> date:
        """The local date the segment starts on (selects the plan version and VAT rate)."""
        return self.days[0] if self.days else self.start.date()


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The instant local ``day`` begins in ``tz`` (aware)."""
    return datetime.combine(day, time(0), tzinfo=tz)


def local_days(start: datetime, end: datetime, tz: ZoneInfo) -> Iterator[date]:
    """Every local date that [start, end) touches, in order."""
    day = start.astimezone(tz).date()
    last = (end - timedelta(microseconds=1)).astimezone(tz).date()
    while day <= last:
        yield day
        day += timedelta(days=1)


def cut_period(period: BillingPeriod, tz: ZoneInfo, cut_dates: Iterable[date]) -> list[Segment]:
    """Cut ``period`` at the local midnights of ``cut_dates`` that fall inside it.

    Each local date the period touches is charged to the segment holding its start
    (or the period start, for a period that begins mid-day), so per-day charges
    count every date exactly once.
    """
    cuts = sorted({m for m in (local_midnight(d, tz) for d in cut_dates) if period.start < m < period.end})
    # in the account's zone, so every time an invoice shows carries the local offset
    starts = [period.start.astimezone(tz), *cuts]
    ends = [*cuts, period.end.astimezone(tz)]
    days: list[list[date]] = [[] for _ in starts]
    for day in local_days(period.start, period.end, tz):
        anchor = max(local_midnight(day, tz), starts[0])
        days[bisect_right(starts, anchor) - 1].append(day)
    return [Segment(start=s, end=e, days=tuple(d)) for s, e, d in zip(starts, ends, days, strict=True)]
