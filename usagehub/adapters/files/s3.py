"""An S3-compatible bucket as an import source: ``s3://bucket/prefix`` on any endpoint URL.

Each object is imported once: a state file under the data folder records
``bucket/key/etag`` after the object's records are all committed (a changed object has a
new ETag and is imported again; its events that were already stored count as duplicates).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import orjson

from usagehub.adapters.base import Sink
from usagehub.adapters.files.importer import FileResult, ProfileResolver, Progress, import_stream

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class S3Object:
    """An object listed under the prefix."""

    bucket: str
    key: str
    etag: str
    size: int
    modified: datetime

    @property
    def url(self) -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (bucket, prefix)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
    return parts.netloc, parts.path.lstrip("/")


class S3State:
    """Objects already imported, one JSON line each (appended and fsynced after the commit)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._done: set[tuple[str, str, str]] = set()
        if path.exists():
            for line in path.read_bytes().splitlines():
                try:
                    item = orjson.loads(line)
                    self._done.add((item["bucket"], item["key"], item["etag"]))
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn last line after a crash: that object is imported again

    def seen(self, obj: S3Object) -> bool:
        """Whether this exact object version was imported."""
        return (obj.bucket, obj.key, obj.etag) in self._done

    def mark(self, obj: S3Object) -> None:
        """Record ``obj`` as imported, durably."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = orjson.dumps({"bucket": obj.bucket, "key": obj.key, "etag": obj.etag,
                             "imported_at": datetime.now(UTC).isoformat()}) + b"\n"
        with self.path.open("ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._done.add((obj.bucket, obj.key, obj.etag))


def make_client(endpoint_url: str | None = None, **kwargs: Any) -> Any:
    """A boto3 S3 client (credentials from the usual AWS variables or files)."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url, **kwargs)


def _list(client: Any, bucket: str, prefix: str) -> Iterator[S3Object]:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", ()):
            if item["Key"].endswith("/"):
                continue  # a folder marker
            yield S3Object(bucket, item["Key"], item["ETag"].strip('"'), int(item["Size"]),
                           item["LastModified"].astimezone(UTC))


async def list_new(client: Any, url: str, state: S3State) -> list[S3Object]:
    """Objects under ``url`` not imported yet, in key order."""
    bucket, prefix = parse_s3_url(url)
    objects = await asyncio.to_thread(lambda: list(_list(client, bucket, prefix)))
    return sorted((o for o in objects if not state.seen(o)), key=lambda o: o.key)


async def import_object(client: Any, obj: S3Object, sink: Sink, resolver: ProfileResolver, state: S3State, *,
                        window: int = 1024, progress: Progress | None = None) -> FileResult:
    """Download one object to a spool file, import it, and mark it done if it was fully read."""
    name = PurePosixPath(obj.key).name
    profile = resolver.resolve(name)
    if profile is None:
        return FileResult(name=name, source=obj.url, error="no profile claims this file name")
    with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as spool:
        await asyncio.to_thread(client.download_fileobj, obj.bucket, obj.key, spool)
        spool.seek(0)
        result = await import_stream(spool, name=name, source=obj.url, modified=obj.modified,  # type: ignore[arg-type]
                                     profile=profile, sink=sink, window=window, progress=progress)
    if result.error is None:
        state.mark(obj)
    return result
