"""Time-of-use: which window (and price) a local instant falls in."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from usagehub.core.tariffs import WEEKDAYS, TimeOfUse
from usagehub.errors import DomainError


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
