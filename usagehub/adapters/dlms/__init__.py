"""DLMS/COSEM adapter: polls meters (registers, clock, load profiles) over the TCP wrapper or HDLC, on dlms-cosem."""

from __future__ import annotations

import builtins

from pydantic import BaseModel

from usagehub.adapters.base import Adapter, AdapterSettings
from usagehub.adapters.dlms.config import DlmsConfig


class _Factory:
    """Creates :class:`~usagehub.adapters.dlms.adapter.DlmsAdapter` instances."""

    type = "dlms"
    config_model: builtins.type[BaseModel] = DlmsConfig

    def create(self, config: BaseModel, settings: AdapterSettings) -> Adapter:
        """A new dlms adapter for a validated :class:`DlmsConfig`."""
        from usagehub.adapters.dlms.adapter import DlmsAdapter  # dlms-cosem loads only when used

        if not isinstance(config, DlmsConfig):
            config = DlmsConfig.model_validate(config.model_dump())
        return DlmsAdapter(config, settings)


FACTORY = _Factory()

__all__ = ["FACTORY", "DlmsConfig"]
