"""docker-compose.yml and the Dockerfile agree with what the hub reads (no Docker engine runs here)."""

from __future__ import annotations

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
    config = load_config(None, environ={k: v.replace("${USAGEHUB_DB_PASSWORD:-change-me}", "pw")
                                        .replace("${USAGEHUB_MQTT_PASSWORD:-change-me}", "pw") for k, v in env.items()})
    db = urlsplit(config.database_url or "")
    assert (db.hostname, db.port) == ("timescaledb", 5432)
    assert db.path.lstrip("/") == services["timescaledb"]["environment"]["POSTGRES_DB"]
    mqtt = urlsplit(config.mqtt_url or "")
    assert (mqtt.hostname, mqtt.port) == ("mosquitto", 1883)
    assert f"{config.http_port}:{config.http_port}" in services["usagehub"]["ports"]
    assert "1883:1883" in services["mosquitto"]["ports"]
    assert config.http_host == "0.0.0.0"


def test_mosquitto_config_lets_the_hub_ack_after_commit() -> None:
    conf = (ROOT / "deploy" / "mosquitto.conf").read_text()
    assert "max_inflight_messages 0" in conf and "persistence true" in conf and "allow_anonymous false" in conf
    mounted = [v.split(":")[0] for v in compose()["services"]["mosquitto"]["volumes"]]
    assert "./deploy/mosquitto.conf" in mounted and "./deploy/acl" in mounted


def test_dockerfile_installs_the_package_and_serves() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install" in text and 'CMD ["serve"]' in text and "device_profiles" in text
