"""The meter-type catalogue: profile files as the bootstrap, stored versions on top, put in force while running.

A saved profile is validated exactly as ``usagehub profiles check`` validates a file, must keep every meter
of the version it replaces with the same kind (stored usage refers to them), is stored as a new version,
and every hub on the database puts it in force when it hears of the commit (LISTEN).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from psycopg_pool import AsyncConnectionPool

from usagehub.core.decode import ProfileSet
from usagehub.core.profiles import Profile, parse_profile
from usagehub.errors import ConfigError, DomainError
from usagehub.storage.notify import listen_forever
from usagehub.storage.pool import mapped_errors
from usagehub.storage.profile_versions import CHANNEL, StoredProfile, add_version, history, latest

log = logging.getLogger(__name__)
SOURCE = "<meter type>"


@dataclass(frozen=True, slots=True, kw_only=True)
class CatalogEntry:
    """One meter type as in force: where it comes from, its version (0: the file) and text."""

    profile: Profile
    source: str
    version: int
    yaml: str


def compatibility_errors(old: Profile, new: Profile) -> list[ConfigError]:
    """A new version may add meters and change how they decode, never drop one or change its kind."""
    errors = []
    for name, spec in old.meters.items():
        if name not in new.meters:
            errors.append(ConfigError(f"meter {name!r} exists in the version in force; stored usage refers to it, "
                                      "so it cannot be removed", file=SOURCE, field=f"meters.{name}"))
        elif new.meters[name].kind is not spec.kind:
            errors.append(ConfigError(f"meter {name!r} is {spec.kind.value} in the version in force; its kind "
                                      "cannot change (add a new meter instead)", file=SOURCE,
                                      field=f"meters.{name}.kind"))
    return errors


class ProfileCatalog:
    """Lists, saves and puts in force meter types; ``profiles`` is the set the pipeline decodes with."""

    def __init__(self, pool: AsyncConnectionPool, profiles: ProfileSet, folder: Path | None,
                 files: list[Profile]) -> None:
        self.pool, self.profiles, self.folder = pool, profiles, folder
        self.files = {p.id: p for p in files}
        self.stored: dict[str, tuple[int, str, Profile]] = {}

    def _file_text(self, profile_id: str) -> str:
        path = self.folder / f"{profile_id}.yaml" if self.folder else None
        try:
            return path.read_text(encoding="utf-8") if path else ""
        except OSError:
            return ""

    async def load(self) -> None:
        """Put the stored versions (over the files) in force."""
        async with mapped_errors(), self.pool.connection() as conn:
            rows = await latest(conn)
        stored = {}
        for row in rows:
            try:
                stored[row.profile_id] = (row.version, row.yaml, parse_profile(row.yaml, SOURCE))
            except ConfigError as err:  # valid when saved; a newer hub may be stricter: keep the file's version
                log.error("stored meter type %s v%d is not valid here (%s); using the file", row.profile_id,
                          row.version, err)
        self.stored = stored
        merged = {**self.files, **{pid: p for pid, (_, _, p) in stored.items()}}
        self.profiles.replace(merged[pid] for pid in sorted(merged))

    def entries(self) -> list[CatalogEntry]:
        """Every meter type in force, by id."""
        out = []
        for pid in sorted({*self.files, *self.stored}):
            if pid in self.stored:
                version, text, profile = self.stored[pid]
                out.append(CatalogEntry(profile=profile, source="database", version=version, yaml=text))
            else:
                out.append(CatalogEntry(profile=self.files[pid], source="file", version=0,
                                        yaml=self._file_text(pid)))
        return out

    async def versions(self, profile_id: str) -> list[StoredProfile]:
        """Every stored version of one profile, newest first (the file, version 0, is not among them)."""
        async with mapped_errors(), self.pool.connection() as conn:
            return await history(conn, profile_id)

    async def save(self, yaml: str, *, author: str) -> tuple[CatalogEntry | None, list[ConfigError]]:
        """Validate and store a new version; the entry in force after it, or the errors (nothing stored)."""
        if len(yaml) > 256 * 1024:
            raise DomainError("BAD_REQUEST", "a meter type is at most 256 KiB of YAML")
        try:
            profile = parse_profile(yaml, SOURCE)
        except ConfigError as err:
            return None, [err]
        current = self.stored[profile.id][2] if profile.id in self.stored else self.files.get(profile.id)
        errors = compatibility_errors(current, profile) if current else []
        if errors:
            return None, errors
        async with mapped_errors(), self.pool.connection() as conn:
            await add_version(conn, profile_id=profile.id, yaml=yaml, author=author)
        await self.load()
        return next(e for e in self.entries() if e.profile.id == profile.id), []

    async def listen(self) -> None:
        """Put versions saved by any hub in force when their commit is heard (and after each reconnection)."""
        await listen_forever(str(self.pool.conninfo), CHANNEL, lambda _: self.load(), on_connect=self.load)
