"""The entry points of ``usagehub import``: local paths and s3:// URLs, once or watching."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from usagehub.adapters.base import Sink
from usagehub.adapters.files.importer import FileResult, ImportSummary, ProfileResolver, expand, import_file
from usagehub.adapters.files.progress import ImportProgress, summary_table
from usagehub.adapters.files.s3 import S3State, import_object, list_new, make_client
from usagehub.adapters.files.watch import DirectoryWatcher
from usagehub.core.profiles import Profile

log = logging.getLogger(__name__)

S3_STATE_FILE = Path("import") / "s3-imported.jsonl"


async def import_paths(paths: Sequence[str | Path], sink: Sink, profiles: Sequence[Profile], *,
                       profile: str | None = None, progress: bool = True, data_dir: Path | None = None,
                       s3_endpoint_url: str | None = None, s3_client: Any = None, window: int = 1024,
                       console: Console | None = None) -> ImportSummary:
    """Import files, folders (their files) and ``s3://bucket/prefix`` URLs; returns after every commit.

    ``profile`` forces one profile id for every file; otherwise each file name is matched
    against the ``transport: file`` profiles. S3 state lives in ``data_dir``.
    """
    resolver = ProfileResolver(profiles, profile)
    summary = ImportSummary()
    bar = ImportProgress(console) if progress else None
    with bar if bar is not None else contextlib.nullcontext():
        for item in paths:
            if str(item).startswith("s3://"):
                client = s3_client or make_client(s3_endpoint_url)
                state = S3State((data_dir or Path(".")) / S3_STATE_FILE)
                for obj in await list_new(client, str(item), state):
                    cb = _bar_callback(bar, obj.key, obj.size)
                    summary.files.append(await import_object(client, obj, sink, resolver, state,
                                                             window=window, progress=cb))
                continue
            for path in expand([item]):
                size = path.stat().st_size if path.exists() else None
                cb = _bar_callback(bar, path.name, size)
                summary.files.append(await import_file(path, sink, resolver, window=window, progress=cb))
    if bar is not None:
        bar.console.print(summary_table(summary))
    return summary


def _bar_callback(bar: ImportProgress | None, name: str, size: int | None) -> Any:
    if bar is None:
        return None
    task = bar.file(name, size)
    return lambda done: bar.update(task, done)


async def watch_paths(directory: Path, sink: Sink, profiles: Sequence[Profile], *, profile: str | None = None,
                      poll_s: float = 1.0, console: Console | None = None) -> None:
    """``import --watch DIR``: import dropped files until cancelled, printing one line per file."""
    out = console or Console(stderr=True)

    def report(result: FileResult) -> None:
        status = f"[red]failed: {result.error}" if result.error else (
            f"{result.accepted} accepted, {result.duplicates} duplicate, {result.quarantined} quarantined")
        out.print(f"{result.name}: {status}")

    watcher = DirectoryWatcher(directory, sink, ProfileResolver(profiles, profile), poll_s=poll_s,
                               on_result=report)
    await watcher.run()


async def watch_s3(url: str, sink: Sink, profiles: Sequence[Profile], *, data_dir: Path,
                   profile: str | None = None, poll_s: float = 30.0, endpoint_url: str | None = None,
                   client: Any = None) -> None:
    """Poll a bucket prefix until cancelled, importing each new object version once."""
    resolver = ProfileResolver(profiles, profile)
    client = client or make_client(endpoint_url)
    state = S3State(data_dir / S3_STATE_FILE)
    failed: set[tuple[str, str]] = set()  # not retried until the object changes (or a restart)
    while True:
        for obj in await list_new(client, url, state):
            if (obj.key, obj.etag) in failed:
                continue
            result = await import_object(client, obj, sink, resolver, state)
            if result.error is not None:
                log.warning("import of %s failed: %s", obj.url, result.error)
                failed.add((obj.key, obj.etag))
        await asyncio.sleep(poll_s)
