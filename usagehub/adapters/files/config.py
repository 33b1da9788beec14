"""What a user sets for the files adapter (a watched folder or bucket inside ``serve``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FilesConfig(BaseModel):
    """A folder or ``s3://bucket/prefix`` to watch, and how its files are read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    watch: str = Field(description="a folder, or s3://bucket/prefix")
    profile: str | None = Field(None, description="force one profile; default: match file names")
    poll_s: float = Field(5.0, gt=0)
    s3_endpoint_url: str | None = Field(None, description="any S3-compatible endpoint; default AWS")
    window: int = Field(1024, ge=1, description="records in flight before waiting for commits")
