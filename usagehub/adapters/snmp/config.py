"""What an operator sets for the snmp adapter; devices and credentials come from the registry."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from usagehub.adapters.ratelimit import RateLimitConfig


class TrapConfig(BaseModel):
    """The trap and inform listener."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = Field(1162, ge=0, le=65535, description="0 picks a free port (tests)")
    queue_max: int = Field(10_000, gt=0, description="traps waiting for the pipeline; beyond: overflow")
    dedupe_window_s: float = Field(300, gt=0, description="a retransmitted inform keeps its first time")
    rate_limit: RateLimitConfig = Field(
        default_factory=lambda: RateLimitConfig(total_per_s=50, total_burst=500),
        description="datagrams per source address; the total only for traps no registered device vouches for")


class SnmpConfig(BaseModel):
    """Polling and trap settings of the snmp adapter."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["snmp"] = "snmp"
    poll_enabled: bool = True
    max_concurrency: int = Field(64, gt=0, description="devices polled at the same time")
    jitter_s: float = Field(1.0, ge=0, description="random delay added to each poll, so polls do not align")
    refresh_s: float = Field(60, gt=0, description="how often the device registry is re-read")
    default_port: int = Field(161, ge=1, le=65535)
    max_varbinds: int = Field(32, gt=0, le=128, description="varbinds per GET request")
    max_repetitions: int = Field(25, gt=0, le=200, description="GETBULK repetitions in table walks")
    state_file: str = Field("snmp-state.json", description="marker state, in the data folder")
    traps: TrapConfig = TrapConfig()
