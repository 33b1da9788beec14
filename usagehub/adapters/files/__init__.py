"""Batch files (CSV, NDJSON, JSON, framed binary; local or S3), registered as ``files``.

``import_paths`` is what ``usagehub import`` calls; the adapter watches a folder or bucket.
"""

from __future__ import annotations

import builtins

from pydantic import BaseModel

from usagehub.adapters.base import Adapter, AdapterSettings
from usagehub.adapters.files.api import import_paths, watch_paths, watch_s3
from usagehub.adapters.files.config import FilesConfig
from usagehub.adapters.files.importer import FileResult, ImportSummary


class _Factory:
    type = "files"
    config_model: builtins.type[BaseModel] = FilesConfig

    def create(self, config: BaseModel, settings: AdapterSettings) -> Adapter:
        from usagehub.adapters.files.adapter import FilesAdapter

        assert isinstance(config, FilesConfig)
        return FilesAdapter(config, settings)


FACTORY = _Factory()

__all__ = ["FACTORY", "FileResult", "FilesConfig", "ImportSummary", "import_paths", "watch_paths", "watch_s3"]
