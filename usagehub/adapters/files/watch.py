"""``import --watch DIR``: import files dropped into a folder, then move each to processed/ or failed/.

A file is taken once its size and modification time held still over one poll, so a file
still being written is not read half-way. A hub killed mid-import leaves the file where
it was; the next pass imports it again and the pipeline counts its events once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from usagehub.adapters.base import Sink
from usagehub.adapters.files.importer import FileResult, ProfileResolver, import_file

log = logging.getLogger(__name__)

PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")
PROCESSED, FAILED = "processed", "failed"


def _candidates(directory: Path) -> dict[Path, tuple[int, int]]:
    found = {}
    for path in directory.iterdir():
        if path.name.startswith(".") or path.name.endswith(PARTIAL_SUFFIXES):
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        if path.is_file():
            found[path] = (stat.st_size, stat.st_mtime_ns)
    return found


def _move(path: Path, folder: Path) -> Path:
    """Move ``path`` into ``folder`` without overwriting an earlier file of the same name."""
    folder.mkdir(exist_ok=True)
    target, n = folder / path.name, 0
    while target.exists():
        n += 1
        target = folder / f"{path.stem}.{n}{path.suffix}"
    return path.rename(target)


class DirectoryWatcher:
    """Polls one folder; ``run`` loops until cancelled, ``scan`` does one pass."""

    def __init__(self, directory: Path, sink: Sink, resolver: ProfileResolver, *, poll_s: float = 1.0,
                 window: int = 1024, on_result: Callable[[FileResult], None] | None = None) -> None:
        self.directory, self.sink, self.resolver = directory, sink, resolver
        self.poll_s, self.window, self.on_result = poll_s, window, on_result
        self._last: dict[Path, tuple[int, int]] = {}

    async def scan(self, *, settle: bool = True) -> list[FileResult]:
        """Import every settled file once; ``settle=False`` takes files without waiting a poll."""
        current = await asyncio.to_thread(_candidates, self.directory)
        ready = sorted(p for p, sig in current.items() if not settle or self._last.get(p) == sig)
        self._last = {p: sig for p, sig in current.items() if p not in ready}
        results = []
        for path in ready:
            result = await import_file(path, self.sink, self.resolver, window=self.window)
            folder = self.directory / (FAILED if result.error else PROCESSED)
            moved = await asyncio.to_thread(_move, path, folder)
            if result.error:
                log.warning("import of %s failed (%s); moved to %s", path.name, result.error, moved)
                await asyncio.to_thread(moved.with_name(moved.name + ".error.txt").write_text,
                                        result.error + "\n")
            if self.on_result is not None:
                self.on_result(result)
            results.append(result)
        return results

    async def run(self) -> None:
        """Scan every ``poll_s`` until cancelled."""
        self.directory.mkdir(parents=True, exist_ok=True)
        log.info("watching %s for files to import", self.directory)
        while True:
            await self.scan()
            await asyncio.sleep(self.poll_s)
