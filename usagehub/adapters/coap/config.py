"""What a user sets for the CoAP adapter."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from usagehub.adapters.ratelimit import RateLimitConfig


class CoapConfig(BaseModel):
    """Bind address, security and limits of the CoAP ingest server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("::", description="address to bind; '::' takes IPv6 and IPv4-mapped requests")
    port: int = Field(5683, ge=0, le=65535)
    oscore: bool = Field(True, description="accept OSCORE-protected requests with per-device keys")
    commit_timeout_s: float = Field(30.0, gt=0, description="answer 5.03 if the commit takes longer")
    max_body_bytes: int = Field(256 * 1024, ge=64, description="largest (block-wise assembled) payload")
    accept_unregistered: bool = Field(
        False, description="on profiles that allow unauthenticated CoAP, also take unregistered device ids")
    credentials_refresh_s: float = Field(60.0, gt=0, description="how often device keys are re-read")
    unauthenticated_rate_limit: RateLimitConfig = Field(
        default_factory=RateLimitConfig, description="requests per source address on unauthenticated profiles")
    state_dir: str | None = Field(None, description="OSCORE sequence state; default <data_dir>/coap/oscore")
