"""Time-of-use: which window (and price) a local instant falls in, and local-day arithmetic."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from usagehub.core.tariffs import WEEKDAYS, TimeOfUse
from usagehub.errors import DomainError


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (DomainError ``UNKNOWN_TIMEZONE`` if there is none)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise DomainError("UNKNOWN_TIMEZONE", f"unknown time zone {name!r}") from None


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


def window_of(tou: TimeOfUse, ts: datetime, tz: ZoneInfo, holidays: frozenset[date]) -> tuple[str, Decimal]:
    """The (window name, unit price) in force at instant ``ts`` in local zone ``tz``."""
    local = ts.astimezone(tz)
    day = "holiday" if local.date() in holidays else WEEKDAYS[local.weekday()]
    minute = local.hour * 60 + local.minute
    for window in tou.windows:
        if day in window.days and window.start_minute <= minute < window.end_minute:
            return window.name, window.price
    if tou.default is not None:
        return tou.default.name, tou.default.price
    raise DomainError("TOU_UNCOVERED", f"no time-of-use window covers {local.isoformat()} ({day})")


def window_rank(tou: TimeOfUse, name: str) -> int:
    """The position of window ``name`` in the plan (default last), for a stable line order."""
    names = [w.name for w in tou.windows]
    return names.index(name) if name in names else len(names)
