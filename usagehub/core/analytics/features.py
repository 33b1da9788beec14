"""Behaviour features of an account from its daily and hourly usage and its prepaid ledger."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from statistics import median

_SHARE = Decimal("0.000001")
_ZERO = Decimal(0)
# Parts of the local day for the load profile; hours are [start, end).
DAY_PARTS = {"night": (0, 6), "morning": (6, 12), "afternoon": (12, 17), "evening": (17, 23)}


def _q(value: Decimal) -> Decimal:
    return value.quantize(_SHARE)


@dataclass(frozen=True, slots=True, kw_only=True)
class DayUsage:
    """Usage of one product on one local day."""

    day: date
    quantity: Decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageFeatures:
    """Usage behaviour of one account and product over the window ending ``as_of`` (None: not enough data)."""

    as_of: date
    days: int
    avg_daily: Decimal | None
    peak_daily: Decimal | None
    volatility: Decimal | None
    mom_trend: Decimal | None
    weekend_ratio: Decimal | None
    weekend_share: Decimal | None
    night_share: Decimal | None
    morning_share: Decimal | None
    afternoon_share: Decimal | None
    evening_share: Decimal | None
    hour_shares: tuple[Decimal, ...]


def _window(as_of: date, size: int) -> list[date]:
    return [as_of - timedelta(days=i) for i in range(size - 1, -1, -1)]


def _shares(hour_totals: Sequence[Decimal]) -> tuple[tuple[Decimal, ...], dict[str, Decimal | None]]:
    total = sum(hour_totals, _ZERO)
    if len(hour_totals) != 24:
        raise ValueError("hour_totals needs 24 values, one per local hour")
    if total <= 0:
        return (), dict.fromkeys(DAY_PARTS)
    shares = tuple(_q(h / total) for h in hour_totals)
    parts: dict[str, Decimal | None] = {name: _q(sum(hour_totals[a:b], _ZERO) / total)
                                        for name, (a, b) in DAY_PARTS.items()}
    return shares, parts


def _volatility(values: list[Decimal]) -> Decimal | None:
    mean = sum(values, _ZERO) / len(values)
    if mean <= 0:
        return None
    variance = sum(((v - mean) ** 2 for v in values), _ZERO) / len(values)
    return _q(variance.sqrt() / mean)


def _mom(by_day: Mapping[date, Decimal], as_of: date, window: int, first: date) -> Decimal | None:
    previous_days = [d - timedelta(days=window) for d in _window(as_of, window)]
    if first > previous_days[0]:
        return None  # the previous window is not fully observed: no honest trend
    current = sum((by_day.get(d, _ZERO) for d in _window(as_of, window)), _ZERO)
    previous = sum((by_day.get(d, _ZERO) for d in previous_days), _ZERO)
    return None if previous <= 0 else _q((current - previous) / previous)


def _weekend(values: Mapping[date, Decimal]) -> tuple[Decimal | None, Decimal | None]:
    weekend = [v for d, v in values.items() if d.weekday() >= 5]
    weekday = [v for d, v in values.items() if d.weekday() < 5]
    total = sum(values.values(), _ZERO)
    share = _q(sum(weekend, _ZERO) / total) if total > 0 else None
    if not weekend or not weekday or sum(weekday, _ZERO) <= 0:
        return None, share
    ratio = (sum(weekend, _ZERO) / len(weekend)) / (sum(weekday, _ZERO) / len(weekday))
    return _q(ratio), share


def compute_usage_features(*, as_of: date, days: Sequence[DayUsage], hour_totals: Sequence[Decimal],
                           first_day: date | None, window: int = 30) -> UsageFeatures:
    """Features over the ``window`` local days ending ``as_of`` (inclusive); days without data count as zero.

    The window starts no earlier than ``first_day`` (the account's first day of data), so a new
    account's average is not diluted by days before it existed.
    """
    by_day: dict[date, Decimal] = {}
    for d in days:
        by_day[d.day] = by_day.get(d.day, _ZERO) + d.quantity
    shares, parts = _shares(hour_totals)
    observed = [d for d in _window(as_of, window) if first_day is not None and d >= first_day]
    if not observed or first_day is None:
        return UsageFeatures(as_of=as_of, days=0, avg_daily=None, peak_daily=None, volatility=None,
                             mom_trend=None, weekend_ratio=None, weekend_share=None, hour_shares=shares,
                             **{f"{k}_share": v for k, v in parts.items()})
    values = {d: by_day.get(d, _ZERO) for d in observed}
    ratio, weekend_share = _weekend(values)
    return UsageFeatures(
        as_of=as_of, days=len(observed), avg_daily=_q(sum(values.values(), _ZERO) / len(values)),
        peak_daily=max(values.values()), volatility=_volatility(list(values.values())),
        mom_trend=_mom(by_day, as_of, window, first_day), weekend_ratio=ratio, weekend_share=weekend_share,
        hour_shares=shares, **{f"{k}_share": v for k, v in parts.items()})


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerEntry:
    """A prepaid ledger entry on a local day, with the balance after it."""

    day: date
    kind: str
    amount: Decimal
    balance_after: Decimal | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountFeatures:
    """Prepaid and activity behaviour of one account over the window ending ``as_of``."""

    as_of: date
    topups: int
    topup_typical: Decimal | None
    days_near_zero: int
    activity: int


def _near_zero_days(entries: Sequence[LedgerEntry], opening: Decimal | None, window: list[date],
                    threshold: Decimal) -> int:
    by_day: dict[date, list[Decimal]] = {}
    for e in entries:
        if e.balance_after is not None:
            by_day.setdefault(e.day, []).append(e.balance_after)
    balance, count = opening, 0
    for d in window:
        seen = ([balance] if balance is not None else []) + by_day.get(d, [])
        if seen and min(seen) <= threshold:
            count += 1
        if d in by_day:
            balance = by_day[d][-1]  # entries arrive in ledger order: the last one closes the day
    return count


def compute_account_features(*, as_of: date, entries: Sequence[LedgerEntry], opening_balance: Decimal | None,
                             activity: int, window: int = 30,
                             near_zero: Decimal = Decimal(1)) -> AccountFeatures:
    """Top-up frequency and typical amount, days spent at or below ``near_zero`` and activity count."""
    days = _window(as_of, window)
    inside = [e for e in entries if days[0] <= e.day <= as_of]
    topups = [e.amount for e in inside if e.kind == "topup"]
    return AccountFeatures(
        as_of=as_of, topups=len(topups), topup_typical=median(topups) if topups else None,
        days_near_zero=_near_zero_days(inside, opening_balance, days, near_zero), activity=activity)
