"""The adapter registry: built-ins by name, entry points, duplicates refused."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from usagehub import adapters
from usagehub.errors import ConfigError


def test_builtins_load_with_matching_type() -> None:
    for name in ("mqtt", "binary"):
        assert adapters.load(name).type == name


def test_unknown_adapter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown adapter 'nope'"):
        adapters.load("nope")


def test_duplicate_entry_point_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = [EntryPoint(name="mqtt", value="thirdparty.mqtt:FACTORY", group=adapters.GROUP)]
    monkeypatch.setattr(adapters, "entry_points", lambda group: fake)
    with pytest.raises(ConfigError, match="registered twice"):
        adapters.available()


def test_third_party_entry_point_is_added(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = [EntryPoint(name="lorawan", value="tests.adapters.test_registry:FACTORY", group=adapters.GROUP)]
    monkeypatch.setattr(adapters, "entry_points", lambda group: fake)
    assert adapters.available()["lorawan"] == "tests.adapters.test_registry:FACTORY"
    with pytest.raises(ConfigError, match="declares type"):
        adapters.load("lorawan")


class _Mislabelled:
    type = "something-else"


FACTORY = _Mislabelled()
