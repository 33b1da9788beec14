"""Importing batch files into the pipeline: each record becomes a deterministic RawMessage.

Exactly-once comes from the pipeline's event identity: re-importing a file, or resuming
one after a crash, submits the same messages (same topic, payload, meta and ``received_at``,
which is the file's modification time) and the pipeline counts their events once.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from usagehub.adapters.base import Outcome, Receipt, Sink
from usagehub.adapters.coap.routing import Router
from usagehub.adapters.files.readers import ReaderError, Record, detect_format, read_records
from usagehub.core.events import RawMessage
from usagehub.core.profiles import Profile

Progress = Callable[[int], None]  # called with the number of bytes read so far in the current file


@dataclass(slots=True, kw_only=True)
class FileResult:
    """What became of one file."""

    name: str
    source: str
    profile: str | None = None
    records: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    error: str | None = None

    def add(self, receipt: Receipt) -> None:
        """Count one record's receipt."""
        self.accepted += receipt.accepted
        self.duplicates += receipt.duplicates
        self.quarantined += receipt.outcome is Outcome.QUARANTINED


@dataclass(slots=True, kw_only=True)
class ImportSummary:
    """Totals over every imported file: events accepted and duplicate, records quarantined."""

    files: list[FileResult] = field(default_factory=list)

    @property
    def records(self) -> int:
        """Records submitted."""
        return sum(f.records for f in self.files)

    @property
    def accepted(self) -> int:
        """New events stored."""
        return sum(f.accepted for f in self.files)

    @property
    def duplicates(self) -> int:
        """Events that were stored before (a re-import)."""
        return sum(f.duplicates for f in self.files)

    @property
    def quarantined(self) -> int:
        """Records stored in quarantine."""
        return sum(f.quarantined for f in self.files)

    @property
    def failed(self) -> list[FileResult]:
        """Files that could not be imported at all."""
        return [f for f in self.files if f.error is not None]


class ProfileResolver:
    """Finds the profile of a file: the one named by the caller, else a ``transport: file`` match."""

    def __init__(self, profiles: Sequence[Profile], profile_id: str | None = None) -> None:
        self._by_id = {p.id: p for p in profiles}
        self._router = Router(profiles, "file")
        self._forced = profile_id
        if profile_id is not None and profile_id not in self._by_id:
            raise LookupError(f"unknown profile {profile_id!r}")

    def resolve(self, name: str) -> Profile | None:
        """The profile for file ``name``, or None."""
        if self._forced is not None:
            return self._by_id[self._forced]
        route = self._router.match(name)
        return route.profile if route else None


async def import_stream(stream: BinaryIO, *, name: str, source: str, modified: datetime, profile: Profile,
                        sink: Sink, window: int = 1024, progress: Progress | None = None) -> FileResult:
    """Submit every record of ``stream``; returns after every record is committed."""
    result = FileResult(name=name, source=source, profile=profile.id)
    pending: deque[asyncio.Future[Receipt]] = deque()
    fmt = detect_format(name, profile)
    try:
        for n, record in enumerate(read_records(stream, fmt, profile), start=1):
            pending.append(await sink.submit(_message(record, name, source, modified, profile)))
            result.records += 1
            if len(pending) >= window:
                result.add(await pending.popleft())
            if progress is not None and n % 256 == 0:
                progress(stream.tell())
    except ReaderError as err:
        result.error = str(err)
    finally:
        # Committed or not, every submitted record's receipt is awaited before we answer.
        for receipt in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(receipt, BaseException):
                raise receipt
            result.add(receipt)
    if progress is not None:
        progress(stream.tell())
    return result


def _message(record: Record, name: str, source: str, modified: datetime, profile: Profile) -> RawMessage:
    meta = {"profile": profile.id, "file": source, "offset": str(record.offset)}
    return RawMessage(transport="file", topic=name, payload=record.payload, received_at=modified,
                      source=source, meta=meta)


async def import_file(path: Path, sink: Sink, resolver: ProfileResolver, *, window: int = 1024,
                      progress: Progress | None = None) -> FileResult:
    """Import one local file; a file no profile claims, or that cannot be read, comes back with ``error``."""
    profile = resolver.resolve(path.name)
    if profile is None:
        return FileResult(name=path.name, source=str(path), error="no profile claims this file name")
    try:
        stream = await asyncio.to_thread(path.open, "rb")
    except OSError as err:
        return FileResult(name=path.name, source=str(path), profile=profile.id, error=str(err))
    with stream:
        modified = datetime.fromtimestamp(os.fstat(stream.fileno()).st_mtime, UTC)
        return await import_stream(stream, name=path.name, source=str(path), modified=modified,
                                   profile=profile, sink=sink, window=window, progress=progress)


def expand(paths: Iterable[str | Path]) -> list[Path]:
    """Files named, and the files directly inside folders named (sorted; hidden files skipped)."""
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")))
        else:
            files.append(path)
    return files
