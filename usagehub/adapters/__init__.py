"""Adapter registry: built-ins by name, plus entry points in group ``usagehub.adapters``."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from usagehub.adapters.base import AdapterFactory
from usagehub.errors import ConfigError

# Imported lazily: a hub that does not use SNMP never imports pysnmp.
BUILTINS: dict[str, str] = {
    "mqtt": "usagehub.adapters.mqtt:FACTORY",
    "sparkplug": "usagehub.adapters.sparkplug:FACTORY",
    "coap": "usagehub.adapters.coap:FACTORY",
    "http": "usagehub.adapters.http:FACTORY",
    "files": "usagehub.adapters.files:FACTORY",
    "snmp": "usagehub.adapters.snmp:FACTORY",
    "binary": "usagehub.adapters.binary:FACTORY",
    "dlms": "usagehub.adapters.dlms:FACTORY",
}

GROUP = "usagehub.adapters"


def available() -> dict[str, str]:
    """Every adapter name mapped to its ``module:attr``; a duplicate name is a ConfigError."""
    found = dict(BUILTINS)
    for ep in entry_points(group=GROUP):
        if ep.name in found:
            raise ConfigError(f"adapter {ep.name!r} is registered twice ({found[ep.name]} and {ep.value})",
                              field="adapters")
        found[ep.name] = ep.value
    return found


def load(name: str, registry: dict[str, str] | None = None) -> AdapterFactory:
    """The factory of adapter ``name``."""
    names = available() if registry is None else registry
    if name not in names:
        raise ConfigError(f"unknown adapter {name!r}; known: {', '.join(sorted(names))}", field="adapters")
    module_name, _, attr = names[name].partition(":")
    factory: AdapterFactory = getattr(importlib.import_module(module_name), attr)
    if factory.type != name:
        raise ConfigError(f"adapter {names[name]} declares type {factory.type!r}, registered as {name!r}")
    return factory
