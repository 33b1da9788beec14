"""The HTTP ingest adapter (``POST /ingest``), registered as ``http``.

Mount :func:`ingest_routes` into the hub's ASGI app, or run the adapter standalone.
"""

from __future__ import annotations

import builtins

from pydantic import BaseModel

from usagehub.adapters.base import Adapter, AdapterSettings
from usagehub.adapters.http.config import HttpConfig
from usagehub.adapters.http.routes import ingest_routes


class _Factory:
    type = "http"
    config_model: builtins.type[BaseModel] = HttpConfig

    def create(self, config: BaseModel, settings: AdapterSettings) -> Adapter:
        from usagehub.adapters.http.adapter import HttpAdapter

        assert isinstance(config, HttpConfig)
        return HttpAdapter(config, settings)


FACTORY = _Factory()

__all__ = ["FACTORY", "HttpConfig", "ingest_routes"]
