"""What a user sets for the MQTT adapter."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator


class MqttConfig(BaseModel):
    """Broker address, session identity and subscriptions of the MQTT adapter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = "mqtt://127.0.0.1:1883"
    client_id: str = "usagehub"
    topics: list[str] = Field(default_factory=list, description="empty: derived from the mqtt profiles")
    qos: int = Field(1, ge=0, le=2)
    keepalive_s: int = Field(30, ge=5)
    reconnect_max_s: float = Field(30.0, gt=0)
    subscribe_timeout_s: float = Field(120.0, gt=0)
    protocol: str = Field("5", pattern="^(3.1.1|5)$")
    # Received messages that may wait in memory before the adapter stops reading (backpressure.py); the
    # rest stays with the broker, unacknowledged. Reading resumes below half of both.
    read_ahead_messages: int = Field(20_000, ge=100)
    read_ahead_mb: int = Field(64, ge=1)
    # PUBACKs leave in the order the messages arrived (the broker's cheapest); a committed message's ack
    # waits for older ones at most this long (ack.py).
    ack_hold_s: float = Field(2.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts", "tcp") or not parts.hostname:
            raise ValueError("mqtt url must look like mqtt://[user:password@]host[:port]")
        return value

    @property
    def host(self) -> str:
        """Broker host name."""
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        """Broker port (1883, or 8883 for mqtts)."""
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def username(self) -> str | None:
        """User name from the URL, if any."""
        user = urlsplit(self.url).username
        return unquote(user) if user else None

    @property
    def password(self) -> str | None:
        """Password from the URL, if any."""
        pw = urlsplit(self.url).password
        return unquote(pw) if pw else None

    @property
    def tls(self) -> bool:
        """Whether the URL asks for TLS."""
        return urlsplit(self.url).scheme == "mqtts"
