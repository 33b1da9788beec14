"""The alert stage: in the batch transaction, note when each device was last heard from and raise event alerts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from usagehub.core.alerts import event_alerts
from usagehub.core.decode import ProfileSet
from usagehub.core.events import UsageEvent
from usagehub.storage.alerts import raise_device_alerts, touch_seen
from usagehub.storage.pool import Connection


class AlertStage:
    """Batch hook: one upsert of last contact per batch, and the alerts of meters a profile marks ``alert:``."""

    def __init__(self, profiles: ProfileSet) -> None:
        self.profiles = profiles
        self._version = -1
        self.rules: dict[tuple[str, str], tuple[str, list[str | int | bool]]] = {}

    def _refresh(self) -> None:
        if self._version != self.profiles.version:  # profiles changed while the hub runs
            self.rules = {(c.profile.id, name): (spec.alert, spec.active_values) for c in self.profiles.compiled
                          for name, spec in c.profile.meters.items() if spec.alert}
            self._version = self.profiles.version

    async def apply(self, conn: Connection, events: Sequence[UsageEvent]) -> None:
        """Run inside the batch transaction, after the events are stored."""
        self._refresh()
        seen: dict[str, tuple[datetime, datetime]] = {}
        for e in events:
            prev = seen.get(e.device_id)
            if prev is None:
                seen[e.device_id] = (e.received_at, e.ts)
            elif e.received_at > prev[0] or e.ts > prev[1]:
                seen[e.device_id] = (max(prev[0], e.received_at), max(prev[1], e.ts))
        await touch_seen(conn, sorted((d, r, t) for d, (r, t) in seen.items()))
        if self.rules:
            await raise_device_alerts(conn, event_alerts(events, self.rules))
