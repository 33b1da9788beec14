"""Configuration of the binary adapter: TCP and UDP listeners, one profile each."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from usagehub.adapters.binary.framing import FramingSpec
from usagehub.adapters.ratelimit import RateLimitConfig


class ListenerConfig(BaseModel):
    """One socket: which profile its frames belong to, how they are framed, where it listens."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    profile: str
    protocol: Literal["tcp", "udp"] = "tcp"
    host: str = "0.0.0.0"
    port: int = Field(ge=0, le=65535)
    framing: FramingSpec | None = Field(None, description="overrides the profile's decode.framing")


class BinaryConfig(BaseModel):
    """What a user sets under ``adapters.binary``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["binary"] = "binary"
    listeners: list[ListenerConfig] = Field(min_length=1)
    idle_timeout_s: float = Field(300.0, gt=0, description="close a silent TCP connection after this")
    max_connections: int = Field(1024, ge=1, description="TCP connections beyond this are closed at once")
    max_connections_per_source: int = Field(32, ge=1, description="TCP connections one address may hold")
    udp_max_inflight: int = Field(512, ge=1, description="UDP datagrams being stored at once; more are dropped")
    udp_rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig,
                                            description="per-source datagram rate on UDP listeners")
