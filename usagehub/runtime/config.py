"""HubConfig: one typed configuration from flags, ``USAGEHUB_*`` environment and a TOML file.

Precedence, lowest first: defaults, the TOML file (``--config``), environment
variables, command-line flags. Validated once at start; a bad value exits with
the file, field and line.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from usagehub.errors import ConfigError

SHIPPED_PROFILES = Path(__file__).resolve().parent.parent / "device_profiles"


class HubConfig(BaseModel):
    """Everything a user sets for a hub; every command reads the same settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Field(Path(".usagehub"), description="embedded database and state live here")
    database_url: str | None = Field(None, description="PostgreSQL URL; empty: embedded PostgreSQL")
    mqtt_url: str | None = Field(None, description="broker URL; empty: embedded broker on 127.0.0.1:1883")
    mqtt_client_id: str = "usagehub"
    embedded_broker_port: int = Field(1883, ge=1, le=65535)
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    profiles: Path = Field(SHIPPED_PROFILES, description="folder of device profile YAML files")
    log_level: str = Field("INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    batch_max_messages: int = Field(2000, ge=1, le=100_000)
    batch_max_wait_ms: float = Field(20.0, ge=0, le=10_000)
    adapters: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                description="extra adapters by name, with their config")
    graphql_max_depth: int = Field(12, ge=2, le=50)
    # Bounds on one GraphQL request (usagehub.graphql.cost.Limits; docs/security-api.md).
    graphql_max_body_bytes: int = Field(64 * 1024, ge=1024)
    graphql_max_tokens: int = Field(2_000, ge=100)
    graphql_max_aliases: int = Field(50, ge=0)
    graphql_max_fields: int = Field(1_000, ge=10)
    graphql_max_cost: int = Field(50_000, ge=100)

    @property
    def uses_embedded_database(self) -> bool:
        """Whether this hub runs its own PostgreSQL."""
        return not self.database_url


ENV_PREFIX = "USAGEHUB_"


def _env_values(environ: dict[str, str]) -> dict[str, Any]:
    fields = HubConfig.model_fields
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX):].lower()
            if name in fields and name != "adapters":
                out[name] = value
    return out


def _toml_line(text: str, field: str) -> int | None:
    m = re.search(rf"^[ \t]*{re.escape(field)}[ \t]*=", text, re.MULTILINE)
    return text.count("\n", 0, m.start()) + 1 if m else None


def load_config(config_file: Path | None = None, overrides: dict[str, Any] | None = None,
                environ: dict[str, str] | None = None) -> HubConfig:
    """Merge defaults, TOML, environment and flag ``overrides`` (None values ignored) into a HubConfig."""
    environ = dict(os.environ) if environ is None else environ
    config_file = config_file or (Path(environ["USAGEHUB_CONFIG"]) if environ.get("USAGEHUB_CONFIG") else None)
    values: dict[str, Any] = {}
    text = ""
    source: dict[str, str] = {}
    if config_file is not None:
        try:
            text = config_file.read_text(encoding="utf-8")
            from_file = tomllib.loads(text)
        except OSError as err:
            raise ConfigError(f"cannot read config file: {err.strerror}", file=str(config_file)) from err
        except tomllib.TOMLDecodeError as err:
            m = re.search(r"line (\d+)", str(err))
            raise ConfigError(f"not valid TOML: {err}", file=str(config_file),
                              line=int(m.group(1)) if m else None) from err
        section = from_file.get("usagehub", from_file)
        values.update(section)
        source.update({k: "file" for k in section})
    env = _env_values(environ)
    values.update(env)
    source.update({k: "env" for k in env})
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    values.update(flags)
    source.update({k: "flag" for k in flags})
    try:
        return HubConfig.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        top = str(first["loc"][0]) if first["loc"] else ""
        origin = source.get(top)
        if origin == "file":
            raise ConfigError(first["msg"], file=str(config_file), field=field, line=_toml_line(text, top)) from err
        where = f"{ENV_PREFIX}{top.upper()}" if origin == "env" else f"--{top.replace('_', '-')}"
        raise ConfigError(first["msg"], file=where, field=field) from err
