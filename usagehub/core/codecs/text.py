"""JSON and CBOR payload codecs."""

from __future__ import annotations

from typing import Any

import cbor2
import orjson
from pydantic import BaseModel

from usagehub.core.codecs import DecodeFn, NoOptions
from usagehub.errors import DecodeError


def _json(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        raise DecodeError("not JSON", detail=str(err)) from err


def _cbor(payload: bytes) -> Any:
    try:
        return cbor2.loads(payload)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as err:
        raise DecodeError("not CBOR", detail=str(err)) from err


class _Simple:
    def __init__(self, name: str, fn: DecodeFn) -> None:
        self.name, self._fn = name, fn
        self.options_model: type[BaseModel] = NoOptions

    def compile(self, options: BaseModel) -> DecodeFn:
        return self._fn


JSON = _Simple("json", _json)
CBOR = _Simple("cbor", _cbor)
