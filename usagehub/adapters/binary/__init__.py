"""Binary adapter: legacy frames over TCP/UDP (construct records, M-Bus, SIA DC-09)."""

from __future__ import annotations

import builtins

from pydantic import BaseModel

from usagehub.adapters.base import Adapter, AdapterSettings
from usagehub.adapters.binary.adapter import BinaryAdapter
from usagehub.adapters.binary.config import BinaryConfig, ListenerConfig
from usagehub.adapters.binary.framing import FramingSpec, default_framing, make_framer, split_frames


class _Factory:
    """Creates binary adapters."""

    type = "binary"
    config_model: builtins.type[BaseModel] = BinaryConfig  # `type` is shadowed by the attribute above

    def create(self, config: BaseModel, settings: AdapterSettings) -> Adapter:
        """A new adapter for validated ``config``."""
        assert isinstance(config, BinaryConfig)
        return BinaryAdapter(config, settings)


FACTORY = _Factory()

__all__ = [
    "FACTORY",
    "BinaryAdapter",
    "BinaryConfig",
    "FramingSpec",
    "ListenerConfig",
    "default_framing",
    "make_framer",
    "split_frames",
]
