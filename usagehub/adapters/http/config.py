"""What a user sets for the HTTP ingest endpoint."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class HttpConfig(BaseModel):
    """Where the standalone HTTP ingest server listens, and the limits of ``POST /ingest``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="standalone server only; mounted routes use the hub's")
    port: int = Field(8081, ge=0, le=65535)
    path: str = Field("/ingest", pattern=r"^/[A-Za-z0-9_./\-]*$")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_lines: int = Field(50_000, ge=1)
    commit_timeout_s: float = Field(30.0, gt=0, description="answer 503 if the commit takes longer")
    token_secret: str = Field("http_token", description="registry secret holding the device's bearer token "
                                                         "(or '<name>_sha256' holding its SHA-256 hex)")
    token_cache_s: float = Field(60.0, gt=0, description="how long the token index is trusted")
    token_miss_refresh_s: float = Field(2.0, ge=0, description="least time between rescans on unknown tokens")
    header_timeout_s: float = Field(10.0, gt=0, description="close a connection whose request headers take longer")
    body_timeout_s: float = Field(30.0, gt=0, description="close a connection whose request body takes longer")
    max_connections: int = Field(1000, ge=1, description="open connections; beyond, a new one is closed at once")
