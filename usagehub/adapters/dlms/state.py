"""Per-meter state that must outlive a restart: the last load-profile entry handed over, the invocation counter."""

from __future__ import annotations

import logging
import os
import threading
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
    """Meter state loaded at start and written atomically (temp file + rename) whenever it changes.

    Polls of several meters save at the same time: ``snapshot()`` is taken on the event loop (which alone changes
    the state) and ``write()`` runs in a thread, one at a time, never replacing a newer snapshot by an older one.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.meters: dict[str, MeterState] = {}
        self._lock = threading.Lock()
        self._taken = 0    # snapshots taken so far (event loop thread)
        self._written = 0  # the newest snapshot on disk (under _lock)

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

    def snapshot(self) -> tuple[int, bytes]:
        """The state as it is now, numbered; call it where the state changes (the event loop), not in a thread."""
        self._taken += 1
        return self._taken, orjson.dumps({
            d: {"last_entry": s.last_entry.isoformat() if s.last_entry else None,
                "invocation_counter": s.invocation_counter} for d, s in self.meters.items()})

    def write(self, snapshot: tuple[int, bytes]) -> None:
        """Write a snapshot atomically and flush it to disk, unless a newer one is there already (it holds this
        one's changes); when this returns, the snapshot's state is durable."""
        number, body = snapshot
        if self.path is None:
            return
        with self._lock:
            if number <= self._written:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "wb") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
            self._written = number

    def save(self) -> None:
        """Snapshot and write in the calling thread."""
        self.write(self.snapshot())

    def save_quietly(self) -> None:
        """Save, logging instead of raising (used on shutdown)."""
        try:
            self.save()
        except OSError as err:
            log.warning("dlms state %s not saved: %s", self.path, err)
