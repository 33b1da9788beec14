"""The CoAP adapter (aiocoap server, OSCORE per-device keys), registered as ``coap``.

Importing this package is cheap: aiocoap is imported only when an adapter is created.
"""

from __future__ import annotations

import builtins

from pydantic import BaseModel

from usagehub.adapters.base import Adapter, AdapterSettings
from usagehub.adapters.coap.config import CoapConfig


class _Factory:
    type = "coap"
    config_model: builtins.type[BaseModel] = CoapConfig

    def create(self, config: BaseModel, settings: AdapterSettings) -> Adapter:
        from usagehub.adapters.coap.adapter import CoapAdapter

        assert isinstance(config, CoapConfig)
        return CoapAdapter(config, settings)


FACTORY = _Factory()

__all__ = ["FACTORY", "CoapConfig"]
