"""Persisted marker state, so a hub restart does not invent a reset (and lose an interval of usage)."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import orjson

from usagehub.adapters.snmp.markers import DeviceMarkers

log = logging.getLogger(__name__)


class MarkerStore:
    """Per-device marker state, loaded at start and written atomically when asked."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.devices: dict[str, DeviceMarkers] = {}

    def load(self) -> None:
        """Read the state file; a missing or corrupt file starts fresh (logged once)."""
        if self.path is None or not self.path.exists():
            return
        try:
            data = orjson.loads(self.path.read_bytes())
            self.devices = {str(k): DeviceMarkers.from_json(v) for k, v in dict(data).items()}
        except (OSError, orjson.JSONDecodeError, TypeError, ValueError) as err:
            log.warning("snmp marker state %s unreadable (%s); starting fresh", self.path, err)

    def get(self, device_id: str) -> DeviceMarkers:
        """The marker state of one device (created empty when new)."""
        return self.devices.setdefault(device_id, DeviceMarkers())

    def save(self) -> None:
        """Write the state atomically (temp file + rename)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({k: v.to_json() for k, v in self.devices.items()}))
        os.replace(tmp, self.path)

    def save_quietly(self) -> None:
        """Save, logging instead of raising (used on shutdown)."""
        with contextlib.suppress(OSError):
            self.save()
