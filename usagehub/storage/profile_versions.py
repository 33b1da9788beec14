"""Meter types (device profiles) stored as versions: the latest of each id is in force."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from usagehub.storage.pool import Connection

CHANNEL = "usagehub_profiles"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredProfile:
    """One version of one profile."""

    profile_id: str
    version: int
    yaml: str
    author: str
    created_at: datetime


def _of(row: Any) -> StoredProfile:
    return StoredProfile(profile_id=str(row[0]), version=int(row[1]), yaml=str(row[2]), author=str(row[3]),
                         created_at=row[4])


async def latest(conn: Connection) -> list[StoredProfile]:
    """The version in force of every stored profile."""
    cur = await conn.execute("SELECT DISTINCT ON (profile_id) profile_id, version, yaml, author, created_at "
                             "FROM device_profile_versions ORDER BY profile_id, version DESC")
    return [_of(r) for r in await cur.fetchall()]


async def history(conn: Connection, profile_id: str) -> list[StoredProfile]:
    """Every stored version of one profile, newest first."""
    cur = await conn.execute("SELECT profile_id, version, yaml, author, created_at FROM device_profile_versions "
                             "WHERE profile_id = %s ORDER BY version DESC", (profile_id,))
    return [_of(r) for r in await cur.fetchall()]


async def add_version(conn: Connection, *, profile_id: str, yaml: str, author: str) -> int:
    """Store the next version of ``profile_id`` (serialised per id); running hubs hear of it at commit."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('profile:' || %s))", (profile_id,))
    cur = await conn.execute(
        "INSERT INTO device_profile_versions (profile_id, version, yaml, author) "
        "SELECT %s, coalesce(max(version), 0) + 1, %s, %s FROM device_profile_versions WHERE profile_id = %s "
        "RETURNING version", (profile_id, yaml, author, profile_id))
    row: Any = await cur.fetchone()
    return int(row[0])
