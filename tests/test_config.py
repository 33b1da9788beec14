"""Settings: defaults < TOML < environment < flags; errors name file, field and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from usagehub.errors import ConfigError
from usagehub.runtime.config import load_config


def test_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "hub.toml"
    toml.write_text('http_port = 9001\nmqtt_url = "mqtt://file:1883"\nlog_level = "DEBUG"\n')
    env = {"USAGEHUB_HTTP_PORT": "9002", "USAGEHUB_MQTT_URL": "mqtt://env:1883"}
    config = load_config(toml, {"http_port": 9003, "database_url": None}, environ=env)
    assert (config.http_port, config.mqtt_url, config.log_level) == (9003, "mqtt://env:1883", "DEBUG")
    assert config.uses_embedded_database


def test_usagehub_config_env_names_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "hub.toml"
    toml.write_text('[usagehub]\nhttp_port = 9005\n')
    assert load_config(None, environ={"USAGEHUB_CONFIG": str(toml)}).http_port == 9005


def test_bad_toml_value_names_file_field_and_line(tmp_path: Path) -> None:
    toml = tmp_path / "hub.toml"
    toml.write_text('log_level = "INFO"\n\nhttp_port = "eighty"\n')
    with pytest.raises(ConfigError) as info:
        load_config(toml, environ={})
    assert (info.value.file, info.value.field, info.value.line) == (str(toml), "http_port", 3)


def test_unknown_setting_and_syntax_error(tmp_path: Path) -> None:
    toml = tmp_path / "hub.toml"
    toml.write_text("colour = 1\n")
    with pytest.raises(ConfigError, match="Extra inputs") as info:
        load_config(toml, environ={})
    assert info.value.line == 1
    toml.write_text("x = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(toml, environ={})
    assert info.value.line == 1


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"USAGEHUB_HTTP_PORT": "-5"})
    assert info.value.file == "USAGEHUB_HTTP_PORT" and info.value.field == "http_port"


def test_timescale_and_retention_settings(tmp_path: Path) -> None:
    toml = tmp_path / "hub.toml"
    toml.write_text("timescale = true\nevent_retention_days = 400\n")
    config = load_config(toml, environ={})
    assert (config.timescale, config.event_retention_days) == (True, 400)
    assert load_config(None, environ={"USAGEHUB_TIMESCALE": "1"}).timescale is True
    assert load_config(None, {"timescale": False}, environ={"USAGEHUB_TIMESCALE": "1"}).timescale is False
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"USAGEHUB_EVENT_RETENTION_DAYS": "-3"})
    assert (info.value.file, info.value.field) == ("USAGEHUB_EVENT_RETENTION_DAYS", "event_retention_days")
