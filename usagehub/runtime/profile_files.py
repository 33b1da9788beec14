"""Load device profiles from a folder: one ``<id>.yaml`` per device model."""

from __future__ import annotations

from pathlib import Path

from usagehub.core.profiles import Profile, parse_profile
from usagehub.errors import ConfigError, ConfigErrors, problems_of


def check_profiles(folder: Path) -> tuple[list[Profile], list[ConfigError]]:
    """Every profile in ``folder`` and every error found, so ``profiles check`` reports all at once."""
    if not folder.is_dir():
        return [], [ConfigError("profiles folder does not exist", file=str(folder))]
    profiles: list[Profile] = []
    errors: list[ConfigError] = []
    for path in sorted(folder.glob("*.y*ml")):
        try:
            profiles.append(parse_profile(path.read_text(encoding="utf-8"), str(path), expected_id=path.stem))
        except ConfigError as err:
            errors += problems_of(err)
        except (OSError, UnicodeDecodeError) as err:
            errors.append(ConfigError(f"cannot read the file: {getattr(err, 'strerror', None) or err}", file=str(path)))
    if not profiles and not errors:
        errors.append(ConfigError("no *.yaml profiles found", file=str(folder)))
    return profiles, errors


def load_profiles(folder: Path) -> list[Profile]:
    """All profiles of ``folder``; every error is raised at once (the hub must not start half-configured)."""
    profiles, errors = check_profiles(folder)
    if errors:
        raise ConfigErrors(errors)
    return profiles
