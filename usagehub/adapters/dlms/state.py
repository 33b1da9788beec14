"""Per-meter state that must outlive a restart: the last load-profile entry handed over, the invocation counter."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson

log = logging.getLogger(__name__)


@dataclass(slots=True)
class MeterState:
    """What the hub remembers of one meter."""

    last_entry: datetime | None = None  # capture time of the newest load-profile row durably stored
    invocation_counter: int = 0         # the next client invocation counter this hub may use


class StateStore:
    """Meter state loaded at start and written atomically (temp file + rename) whenever it changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.meters: dict[str, MeterState] = {}

    def load(self) -> None:
        """Read the state file; a missing file starts fresh, a corrupt one is logged and starts fresh."""
        if self.path is None or not self.path.exists():
            return
        try:
            data = orjson.loads(self.path.read_bytes())
            self.meters = {
                str(device): MeterState(
                    last_entry=datetime.fromisoformat(item["last_entry"]) if item.get("last_entry") else None,
                    invocation_counter=int(item.get("invocation_counter", 0)))
                for device, item in dict(data).items()}
        except (OSError, orjson.JSONDecodeError, TypeError, ValueError, KeyError) as err:
            log.warning("dlms state %s unreadable (%s); starting fresh", self.path, err)

    def get(self, device_id: str) -> MeterState:
        """The state of one meter (created empty when new)."""
        return self.meters.setdefault(device_id, MeterState())

    def save(self) -> None:
        """Write the state atomically and flush it to disk."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = orjson.dumps({d: {"last_entry": s.last_entry.isoformat() if s.last_entry else None,
                                 "invocation_counter": s.invocation_counter} for d, s in self.meters.items()})
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)

    def save_quietly(self) -> None:
        """Save, logging instead of raising (used on shutdown)."""
        with contextlib.suppress(OSError):
            self.save()
