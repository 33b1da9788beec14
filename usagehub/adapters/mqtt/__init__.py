"""The MQTT adapter (aiomqtt), registered as ``mqtt``."""

from __future__ import annotations

import builtins

from pydantic import BaseModel

from usagehub.adapters.base import Adapter, AdapterSettings
from usagehub.adapters.mqtt.adapter import MqttAdapter
from usagehub.adapters.mqtt.config import MqttConfig


class _Factory:
    type = "mqtt"
    config_model: builtins.type[BaseModel] = MqttConfig

    def create(self, config: BaseModel, settings: AdapterSettings) -> Adapter:
        assert isinstance(config, MqttConfig)
        return MqttAdapter(config, settings)


FACTORY = _Factory()
