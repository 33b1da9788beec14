"""What an operator sets for the dlms adapter; meters, their passwords and keys come from the registry."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class DlmsConfig(BaseModel):
    """Polling settings of the dlms adapter (DLMS/COSEM meters over the TCP wrapper or HDLC over TCP)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["dlms"] = "dlms"
    poll_enabled: bool = True
    max_concurrency: int = Field(8, gt=0, description="meters read at the same time (each in a thread)")
    jitter_s: float = Field(1.0, ge=0, description="random delay added to each poll, so polls do not align")
    retry_first_s: float = Field(2.0, gt=0, description="first retry after a transient failure; doubles, "
                                 "capped at the poll interval (a refused password or key waits the interval)")
    refresh_s: float = Field(60, gt=0, description="how often the device registry is re-read")
    default_port: int = Field(4059, ge=1, le=65535, description="the IANA DLMS/COSEM port")
    client_system_title: str = Field("5553480000000001", description="this hub's system title, 16 hex digits")
    invocation_reserve: int = Field(10_000, gt=0, description="invocation counters reserved (durably) per session")
    state_file: str = Field("dlms-state.json", description="last load-profile entry and invocation counter per meter")

    @field_validator("client_system_title")
    @classmethod
    def _title(cls, value: str) -> str:
        try:
            if len(bytes.fromhex(value)) == 8:
                return value.upper()
        except ValueError:
            pass
        raise ValueError("client_system_title is 8 bytes written as 16 hex digits")
