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

from usagehub.errors import ConfigError, ConfigErrors

SHIPPED_PROFILES = Path(__file__).resolve().parent.parent / "device_profiles"


class HubConfig(BaseModel):
    """Everything a user sets for a hub; every command reads the same settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Field(Path(".usagehub"), description="embedded database and state live here")
    database_url: str | None = Field(None, description="PostgreSQL URL; empty: embedded PostgreSQL")
    timescale: bool = Field(False, description="preload TimescaleDB in the embedded PostgreSQL (scripts/timescale)")
    event_retention_days: int | None = Field(
        None, ge=0, description="drop raw events older than this (TimescaleDB), never those of unbilled periods; "
        "0 removes the policy, unset leaves it as it is")
    mqtt_url: str | None = Field(None, description="broker URL; empty: embedded broker on 127.0.0.1:1883")
    mqtt_client_id: str = "usagehub"
    embedded_broker_port: int = Field(1883, ge=1, le=65535)
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    profiles: Path = Field(SHIPPED_PROFILES, description="folder of device profile YAML files")
    log_level: str = Field("INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    batch_max_messages: int = Field(2000, ge=1, le=100_000)
    batch_max_wait_ms: float = Field(20.0, ge=0, le=10_000)
    commit_lanes: int = Field(4, ge=1, le=16, description="ingest batches committed at once (messages of one "
                                                          "sender share a lane)")
    # Sessions off the ingest path (pipeline/session_worker.py): N child processes replay the session queue. Two on
    # 2 cores: one alone fell behind while ingest took both cores, and billed a burst's last readings seconds after
    # storing them (docs/architecture.md, "Sessions off the ingest path").
    session_workers: int = Field(default_factory=lambda: 2 if (os.cpu_count() or 1) >= 2 else 1, ge=0, le=64,
                                 description="session worker processes (default: 2 on 2 cores or more, else 1); "
                                             "0: sessions and billing records are recomputed inside each ingest "
                                             "batch")
    # Receive in the hub process, decode and commit MQTT messages in N children (runtime/ingest_processes.py).
    ingest_processes: int | None = Field(None, ge=0, le=16, description="child processes decoding and committing "
                                         "MQTT messages (commit_lanes are shared among them); 0: the hub process "
                                         "does it; unset: 2 on a machine of 2 cores or more, else 0")
    # Scale-out (docs/scale-out.md): a JetStream stream between adapters and pipeline workers.
    bus: str | None = Field(None, description="NATS URL(s), comma-separated; empty: no bus (or embedded with workers)")
    workers: int = Field(0, ge=0, le=256, description="pipeline worker processes; 0: the pipeline runs in-process")
    bus_partitions: int = Field(16, ge=1, le=4096, description="stream partitions (fixed for a stream's life)")
    bus_replicas: int = Field(1, ge=1, le=5, description="stream replicas: 3 on a 3-node cluster")
    bus_ack_wait_s: float = Field(30.0, gt=0, le=3600, description="redelivery delay of an unacked message")
    worker_metrics_port: int | None = Field(None, ge=1, le=65535, description="bus worker (or ingest process) N "
                                            "serves /metrics on http_host at this port + N; unset: they serve none")
    adapters: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                description="extra adapters by name, with their config")
    graphql_max_depth: int = Field(12, ge=2, le=50)
    quarantine_retention_days: int = Field(30, ge=1, description="quarantine entries not seen for longer go")
    quarantine_max_rows: int = Field(1_000_000, ge=100, description="beyond, the oldest entries go")
    device_key_secret: str | None = Field(None, description="seals per-device AES keys (wM-Bus) at rest")
    device_key_refresh_s: float = Field(30.0, gt=0, description="how often a running hub reloads device keys")
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


def _toml_line(text: str, field: str, section: str | None = None) -> int | None:
    """The line of ``field =`` (inside table ``[… section]`` when given), or of the table's header."""
    start = 0
    if section is not None:
        header = re.search(rf"^[ \t]*\[(?:usagehub\.)?{re.escape(section)}\][ \t]*(#.*)?$", text, re.MULTILINE)
        if header is None:
            return None
        start = header.end()
        if not field:
            return text.count("\n", 0, header.start()) + 1
    m = re.compile(rf"^[ \t]*{re.escape(field)}[ \t]*=", re.MULTILINE).search(text, start)
    if m is None and section is not None:
        return text.count("\n", 0, start) + 1
    return text.count("\n", 0, m.start()) + 1 if m else None


def _read_toml(config_file: Path) -> tuple[str, dict[str, Any]]:
    try:
        text = config_file.read_text(encoding="utf-8")
        return text, tomllib.loads(text)
    except OSError as err:
        raise ConfigError(f"cannot read config file: {err.strerror}", file=str(config_file)) from err
    except tomllib.TOMLDecodeError as err:
        m = re.search(r"line (\d+)", str(err))
        raise ConfigError(f"not valid TOML: {str(err).split(' (at line')[0]}", file=str(config_file),
                          line=int(m.group(1)) if m else None) from err


def load_config(config_file: Path | None = None, overrides: dict[str, Any] | None = None,
                environ: dict[str, str] | None = None) -> HubConfig:
    """Merge defaults, TOML, environment and flag ``overrides`` (None values ignored) into a HubConfig.

    Every problem is reported at once (``ConfigErrors``), adapter tables included.
    """
    environ = dict(os.environ) if environ is None else environ
    config_file = config_file or (Path(environ["USAGEHUB_CONFIG"]) if environ.get("USAGEHUB_CONFIG") else None)
    values: dict[str, Any] = {}
    text = ""
    source: dict[str, str] = {}
    if config_file is not None:
        text, from_file = _read_toml(config_file)
        section = from_file.get("usagehub", from_file)
        values.update(section)
        source.update({k: "file" for k in section})
    env = _env_values(environ)
    values.update(env)
    source.update({k: "env" for k in env})
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    values.update(flags)
    source.update({k: "flag" for k in flags})
    problems: list[ConfigError] = []
    config: HubConfig | None = None
    try:
        config = HubConfig.model_validate(values)
    except ValidationError as err:
        for item in err.errors():
            field = ".".join(str(p) for p in item["loc"])
            top = str(item["loc"][0]) if item["loc"] else ""
            origin = source.get(top)
            if origin == "file":
                problems.append(ConfigError(item["msg"], file=str(config_file), field=field,
                                            line=_toml_line(text, top)))
            else:
                where = f"{ENV_PREFIX}{top.upper()}" if origin == "env" else f"--{top.replace('_', '-')}"
                problems.append(ConfigError(item["msg"], file=where, field=field))
    problems += _adapter_problems(values.get("adapters"), text, str(config_file) if config_file else "adapters")
    if problems:
        raise ConfigErrors(sorted(problems, key=lambda p: (p.file or "", p.line or 0)))
    assert config is not None
    return config


def _adapter_problems(adapters_value: Any, text: str, file: str) -> list[ConfigError]:
    """Unknown adapter tables and bad adapter settings, with the table's file and line."""
    from usagehub import adapters  # the registry; adapter modules load only when a table names them

    if not isinstance(adapters_value, dict):
        return []
    problems: list[ConfigError] = []
    known = adapters.available()
    for name, raw in adapters_value.items():
        section = f"adapters.{name}"
        if name not in known:
            problems.append(ConfigError(f"unknown adapter {name!r}; known: {', '.join(sorted(known))}",
                                        file=file, field=section, line=_toml_line(text, "", section)))
            continue
        if not isinstance(raw, dict):
            continue
        factory = adapters.load(name)
        settings = {"url": "mqtt://127.0.0.1:1883", **raw} if name == "mqtt" else raw  # the hub fills in the url
        try:
            factory.config_model.model_validate(settings)
        except ValidationError as err:
            for item in err.errors():
                key = str(item["loc"][0]) if item["loc"] else ""
                problems.append(ConfigError(str(item["msg"]).removeprefix("Value error, "), file=file,
                                            field=".".join([section, *(str(p) for p in item["loc"])]),
                                            line=_toml_line(text, key, section)))
    return problems


def with_flags(config: HubConfig, **flags: Any) -> HubConfig:
    """``config`` with a command's own flags on top (None values ignored), validated again."""
    given = {k: v for k, v in flags.items() if v is not None}
    if not given:
        return config
    try:
        return HubConfig.model_validate({**config.model_dump(), **given})
    except ValidationError as err:
        first = err.errors()[0]
        top = str(first["loc"][0]) if first["loc"] else ""
        raise ConfigError(first["msg"], file=f"--{top.replace('_', '-')}", field=top) from err
