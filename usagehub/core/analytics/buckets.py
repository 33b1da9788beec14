"""Time buckets aligned to an account's zone: 15 min (UTC-aligned), hour, day, ISO week, month."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

QUARTER = timedelta(minutes=15)


class Bucket(StrEnum):
    """Bucket widths a series can be asked in."""

    QUARTER = "15min"
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


def floor_quarter(ts: datetime) -> datetime:
    """The UTC 15-minute bucket holding ``ts``.

    Every offset in use today is a multiple of 15 minutes (Nepal +5:45, Chatham
    +12:45), so a UTC quarter is also a local quarter in every real zone: the
    quarter-hour series can be bucketed in UTC and regrouped per zone when read.
    """
    if ts.tzinfo is None:
        raise ValueError("floor_quarter needs an aware datetime")
    utc = ts.astimezone(UTC)
    return utc.replace(minute=utc.minute - utc.minute % 15, second=0, microsecond=0)


def local_day_start(day: date, zone: ZoneInfo) -> datetime:
    """The instant the local ``day`` begins (midnight, or the first valid instant after a gap)."""
    naive = datetime(day.year, day.month, day.day)
    aware = naive.replace(tzinfo=zone)
    # A midnight inside a DST gap does not exist: round-tripping through UTC moves it forward.
    return aware.astimezone(UTC).astimezone(zone)


def bucket_label(ts: datetime, zone: ZoneInfo, bucket: Bucket) -> datetime:
    """The local wall-clock start (naive) of the bucket of ``ts`` in ``zone``."""
    local = ts.astimezone(zone).replace(tzinfo=None)
    if bucket is Bucket.QUARTER:
        return local.replace(minute=local.minute - local.minute % 15, second=0, microsecond=0)
    if bucket is Bucket.HOUR:
        return local.replace(minute=0, second=0, microsecond=0)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if bucket is Bucket.DAY:
        return day
    if bucket is Bucket.WEEK:
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def bucket_start(ts: datetime, zone: ZoneInfo, bucket: Bucket) -> datetime:
    """The aware instant the zone-aligned bucket holding ``ts`` begins."""
    label = bucket_label(ts, zone, bucket)
    if bucket in (Bucket.QUARTER, Bucket.HOUR):
        # Sub-day labels are exact local times; fold=0 picks the first of a repeated hour,
        # then the true instant is whichever occurrence is not after ts.
        first = label.replace(tzinfo=zone, fold=0)
        second = label.replace(tzinfo=zone, fold=1)
        candidates = sorted({first.astimezone(UTC), second.astimezone(UTC)})
        return max(c for c in candidates if c <= ts.astimezone(UTC)).astimezone(zone)
    return local_day_start(label.date(), zone)
