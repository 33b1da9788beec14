"""The files adapter: inside ``serve``, import what lands in a folder or a bucket prefix."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Self

from usagehub.adapters.base import AdapterSettings, Sink
from usagehub.adapters.files.api import watch_s3
from usagehub.adapters.files.config import FilesConfig
from usagehub.adapters.files.importer import ProfileResolver
from usagehub.adapters.files.watch import DirectoryWatcher
from usagehub.errors import PermanentAdapterError


class FilesAdapter:
    """Watches ``config.watch`` until cancelled."""

    def __init__(self, config: FilesConfig, settings: AdapterSettings) -> None:
        self.config, self.settings = config, settings

    async def __aenter__(self) -> Self:
        try:
            ProfileResolver(self.settings.profiles, self.config.profile)
        except LookupError as err:
            raise PermanentAdapterError(str(err)) from err
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None

    async def run(self, sink: Sink) -> None:
        """Import new files through ``sink`` until cancelled."""
        cfg = self.config
        if cfg.watch.startswith("s3://"):
            await watch_s3(cfg.watch, sink, self.settings.profiles, data_dir=self.settings.data_dir,
                           profile=cfg.profile, poll_s=cfg.poll_s, endpoint_url=cfg.s3_endpoint_url)
            return
        resolver = ProfileResolver(self.settings.profiles, cfg.profile)
        await DirectoryWatcher(Path(cfg.watch), sink, resolver, poll_s=cfg.poll_s, window=cfg.window).run()
