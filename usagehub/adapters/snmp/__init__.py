"""SNMP adapter: polling (v1/v2c/v3 GET and table walks) and trap/inform reception, on pysnmp 7."""

from __future__ import annotations

import builtins

from pydantic import BaseModel

from usagehub.adapters.base import Adapter, AdapterSettings
from usagehub.adapters.snmp.config import SnmpConfig, TrapConfig


class _Factory:
    """Creates :class:`~usagehub.adapters.snmp.adapter.SnmpAdapter` instances."""

    type = "snmp"
    config_model: builtins.type[BaseModel] = SnmpConfig

    def create(self, config: BaseModel, settings: AdapterSettings) -> Adapter:
        """A new snmp adapter for a validated :class:`SnmpConfig`."""
        from usagehub.adapters.snmp.adapter import SnmpAdapter  # pysnmp loads only when used

        if not isinstance(config, SnmpConfig):
            config = SnmpConfig.model_validate(config.model_dump())
        return SnmpAdapter(config, settings)


FACTORY = _Factory()

__all__ = ["FACTORY", "SnmpConfig", "TrapConfig"]
