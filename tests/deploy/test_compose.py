"""docker-compose.yml and the Dockerfile agree with what the hub reads (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from usagehub.runtime.config import ENV_PREFIX, HubConfig, load_config

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_are_timescaledb_mosquitto_and_the_hub() -> None:
    services = compose()["services"]
    assert set(services) == {"timescaledb", "mosquitto", "usagehub"}
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb")
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto")


def test_hub_settings_are_settings_the_hub_reads_and_point_at_the_services() -> None:
    services = compose()["services"]
    env = {k: str(v) for k, v in services["usagehub"]["environment"].items()}
    unknown = [k for k in env if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX):].lower() not in HubConfig.model_fields]
    assert unknown == []
    config = load_config(None, environ={k: re.sub(r"\$\{USAGEHUB_(DB|MQTT)_PASSWORD:\?[^}]*\}", "pw", v)
                                        for k, v in env.items()})
    db = urlsplit(config.database_url or "")
    assert (db.hostname, db.port) == ("timescaledb", 5432)
    assert db.path.lstrip("/") == services["timescaledb"]["environment"]["POSTGRES_DB"]
    mqtt = urlsplit(config.mqtt_url or "")
    assert (mqtt.hostname, mqtt.port) == ("mosquitto", 1883)
    assert services["usagehub"]["ports"] == [f"${{USAGEHUB_API_BIND:-127.0.0.1}}:{config.http_port}:{config.http_port}"]
    assert config.http_host == "0.0.0.0"


def test_mosquitto_config_lets_the_hub_ack_after_commit() -> None:
    conf = (ROOT / "deploy" / "mosquitto.conf").read_text()
    assert "max_inflight_messages 0" in conf and "persistence true" in conf and "allow_anonymous false" in conf
    assert "set_tcp_nodelay true" in conf  # prepaid answers are not held back by Nagle and delayed ACKs
    mounted = [v.split(":")[0] for v in compose()["services"]["mosquitto"]["volumes"]]
    assert "./deploy/mosquitto.conf" in mounted and "./deploy/acl" in mounted


def test_dockerfile_installs_the_package_and_serves() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install" in text and 'CMD ["serve"]' in text and "device_profiles" in text


def test_no_default_passwords_and_only_needed_ports() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "change-me" not in text
    assert re.findall(r"\$\{(\w+):-", text) == ["USAGEHUB_API_BIND"]  # the only default is not a secret
    services = compose()["services"]
    # A password missing from the environment stops compose (":?"), it never falls back to a default.
    assert services["timescaledb"]["environment"]["POSTGRES_PASSWORD"].startswith("${USAGEHUB_DB_PASSWORD:?")
    assert "ports" not in services["timescaledb"]                 # PostgreSQL stays on the compose network
    assert services["mosquitto"]["ports"] == ["8883:8883"]        # devices: TLS only; plain 1883 is internal
    conf = (ROOT / "deploy" / "mosquitto.conf").read_text()
    assert "listener 8883" in conf and "certfile /mosquitto/certs/server.crt" in conf
    mounted = [v.split(":")[0] for v in services["mosquitto"]["volumes"]]
    assert "./deploy/certs" in mounted
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert {".env", "/deploy/passwd", "/deploy/certs/"} <= set(ignored)
