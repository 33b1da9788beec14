"""The Sparkplug B adapter (MQTT host application), registered as ``sparkplug``."""

from __future__ import annotations

import builtins

from pydantic import BaseModel

from usagehub.adapters.base import Adapter, AdapterSettings
from usagehub.adapters.sparkplug.adapter import SparkplugAdapter
from usagehub.adapters.sparkplug.config import SparkplugConfig


class _Factory:
    type = "sparkplug"
    config_model: builtins.type[BaseModel] = SparkplugConfig

    def create(self, config: BaseModel, settings: AdapterSettings) -> Adapter:
        assert isinstance(config, SparkplugConfig)
        return SparkplugAdapter(config, settings)


FACTORY = _Factory()
