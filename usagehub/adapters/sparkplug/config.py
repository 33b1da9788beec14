"""What a user sets for the Sparkplug B adapter: an MQTT connection plus the host application's rules."""

from __future__ import annotations

from pydantic import Field

from usagehub.adapters.mqtt.config import MqttConfig


class SparkplugConfig(MqttConfig):
    """Broker, Sparkplug groups to follow, rebirth pacing and where session state is kept."""

    client_id: str = "usagehub-sparkplug"
    qos: int = Field(0, ge=0, le=1, description="Sparkplug publishes data at QoS 0")
    groups: list[str] = Field(default_factory=lambda: ["+"], description="group ids; '+' follows every group")
    rebirth_interval_s: float = Field(5.0, gt=0, description="at most one rebirth request per node this often")
    forward_node_messages: bool = Field(False, description="submit NBIRTH/NDATA too (edge nodes that are meters)")
    state_file: str = Field("sparkplug-state.json", description="aliases and sessions, under the data folder")
