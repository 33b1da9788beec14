"""Alert rules: which events are tamper or fault alerts, and which devices have gone silent. Pure; time passed in."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from usagehub.core.events import MeterKind, UsageEvent

SEVERITY = {"tamper": "critical", "fault": "warning", "silent": "warning", "quarantine_burst": "warning"}


@dataclass(frozen=True, slots=True, kw_only=True)
class NewAlert:
    """An alert to raise; ``dedupe_key`` names its cause, so raising it twice stores it once."""

    kind: str
    severity: str
    device_id: str | None
    message: str
    raised_at: datetime
    dedupe_key: str


def _fires(event: UsageEvent, active_values: Sequence[object]) -> bool:
    """A state meter fires when it becomes active; any other meter when its value is not zero."""
    if event.kind is MeterKind.STATE:
        return event.text_value in {str(v) for v in active_values} or bool(event.value)
    return bool(event.value)


def event_alerts(events: Iterable[UsageEvent], rules: Mapping[tuple[str, str], tuple[str, Sequence[object]]]
                 ) -> list[NewAlert]:
    """Alerts of the events whose (profile, meter) a profile marks as ``alert: tamper|fault``."""
    out = []
    for e in events:
        rule = rules.get((e.profile_id, e.meter))
        if rule is None or not _fires(e, rule[1]):
            continue
        kind = rule[0]
        out.append(NewAlert(kind=kind, severity=SEVERITY[kind], device_id=e.device_id,
                            message=f"{kind}: {e.meter} on {e.device_id} at {e.ts.isoformat()}",
                            raised_at=e.ts,
                            dedupe_key=f"event:{e.device_id}:{e.meter}:{e.event_id}:{e.ts.isoformat()}"))
    return out


def silent_alerts(seen: Iterable[tuple[str, str, datetime]], silent_after: Mapping[str, timedelta],
                  now: datetime) -> list[NewAlert]:
    """A device of a profile with ``silent_after_s`` not heard from for that long: one alert per silence."""
    out = []
    for device, profile, last in seen:
        limit = silent_after.get(profile)
        if limit is None or now - last < limit:
            continue
        out.append(NewAlert(kind="silent", severity=SEVERITY["silent"], device_id=device,
                            message=f"{device} silent since {last.isoformat()} (expected every "
                                    f"{int(limit.total_seconds())} s)",
                            raised_at=now, dedupe_key=f"silent:{device}:{last.isoformat()}"))
    return out


def burst_alerts(bursts: Iterable[tuple[str, int]], window: timedelta, now: datetime) -> list[NewAlert]:
    """One alert per device and window whose quarantined messages reached the threshold."""
    slot = int(now.timestamp() // window.total_seconds())
    return [NewAlert(kind="quarantine_burst", severity=SEVERITY["quarantine_burst"], device_id=device,
                     message=f"{count} messages of {device} quarantined in the last "
                             f"{int(window.total_seconds() // 60)} minutes",
                     raised_at=now, dedupe_key=f"burst:{device}:{slot}") for device, count in bursts]
