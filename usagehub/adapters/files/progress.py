"""A rich progress bar per file and the final summary table of ``usagehub import``."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from usagehub.adapters.files.importer import ImportSummary


class ImportProgress:
    """One bar per file (bytes read); a context manager around the whole import."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), TimeRemainingColumn(), console=self.console)

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def file(self, name: str, size: int | None) -> TaskID:
        """Start a bar for one file."""
        return self._progress.add_task(name[-40:], total=size)

    def update(self, task: TaskID, done: int) -> None:
        """Move a file's bar to ``done`` bytes."""
        self._progress.update(task, completed=done)


def summary_table(summary: ImportSummary) -> Table:
    """Per-file and total counts: records, events accepted, duplicate events, quarantined records."""
    table = Table(title="import summary")
    for column in ("file", "profile", "records", "accepted", "duplicate", "quarantined", "error"):
        table.add_column(column, justify="right" if column in ("records", "accepted", "duplicate",
                                                                 "quarantined") else "left")
    for f in summary.files:
        table.add_row(f.name, f.profile or "-", str(f.records), str(f.accepted), str(f.duplicates),
                      str(f.quarantined), f.error or "")
    table.add_row("[bold]total", "", str(summary.records), str(summary.accepted), str(summary.duplicates),
                  str(summary.quarantined), f"{len(summary.failed)} failed" if summary.failed else "")
    return table
