"""Payload codecs: bytes in, a JSON-like document out; chosen by a profile's ``decode.type``.

A codec is ``name``, ``options_model`` (a pydantic model of the profile's
``decode:`` options, ``extra="forbid"``) and ``compile(options)``, which returns
a function ``bytes -> document`` prepared once per profile (construct layouts are
compiled there). The function raises :class:`usagehub.errors.DecodeError` on bad
bytes and nothing else. Built-ins are imported lazily by name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

Document = Any
DecodeFn = Callable[[bytes], Document]
# Meter id -> its 16-byte AES key, or None; filled by the runtime from the encrypted key store.
KeyLookup = Callable[[str], bytes | None]


class NoOptions(BaseModel):
    """A codec that takes no options beyond ``type``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str


class Codec(Protocol):
    """What a payload codec provides."""

    name: str
    options_model: type[BaseModel]

    def compile(self, options: BaseModel) -> DecodeFn:
        """Prepare a decoder for one profile's options."""
        ...


BUILTIN_CODECS: dict[str, str] = {
    "json": "usagehub.core.codecs.text:JSON",
    "cbor": "usagehub.core.codecs.text:CBOR",
    "binary": "usagehub.core.codecs.layout:CODEC",
    "mbus": "usagehub.core.codecs.mbus:CODEC",
    "dc09": "usagehub.core.codecs.dc09:CODEC",
    "snmp": "usagehub.core.codecs.snmp:CODEC",
    "wmbus": "usagehub.core.codecs.wmbus:CODEC",
    "sparkplug": "usagehub.core.codecs.sparkplug:CODEC",
    "dlms_push": "usagehub.core.codecs.dlms_push:CODEC",
    "dlms_poll": "usagehub.core.codecs.dlms_poll:CODEC",
}


def get_codec(name: str) -> Codec:
    """The codec registered as ``name``; KeyError if there is none."""
    target = BUILTIN_CODECS[name]
    module_name, attr = target.split(":")
    codec: Codec = getattr(importlib.import_module(module_name), attr)
    return codec
