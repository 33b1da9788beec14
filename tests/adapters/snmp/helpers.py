"""Shared helpers of the snmp tests: shipped profiles, a ProfileSet, adapter settings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tests.fakes import StaticDirectory
from usagehub.adapters.base import AdapterSettings, DeviceEndpoint
from usagehub.adapters.snmp.config import SnmpConfig, TrapConfig
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage, UsageEvent
from usagehub.core.profiles import Profile, parse_profile

PROFILES_DIR = Path(__file__).resolve().parents[3] / "device_profiles"
SNMP_PROFILES = ("apc-ap8641", "ietf-ups-mib", "ietf-if-mib-switch", "ip-camera", "security-panel-traps")


def shipped(name: str) -> Profile:
    """One of the profiles shipped in device_profiles/."""
    path = PROFILES_DIR / f"{name}.yaml"
    return parse_profile(path.read_text(), str(path), expected_id=name)


def profile_from(text: str) -> Profile:
    """A profile from inline YAML (tests)."""
    return parse_profile(text, "<test>")


def settings(
    profiles: Sequence[Profile], endpoints: Sequence[DeviceEndpoint], data_dir: Path
) -> AdapterSettings:
    """AdapterSettings over a static directory."""
    return AdapterSettings(profiles=list(profiles), devices=StaticDirectory(endpoints), data_dir=data_dir)


def config(**overrides: object) -> SnmpConfig:
    """A test config: traps on a free port unless given, fast refresh, no jitter."""
    traps = overrides.pop("traps", TrapConfig(host="127.0.0.1", port=0))
    return SnmpConfig.model_validate({"jitter_s": 0, "refresh_s": 0.2, "traps": traps, **overrides})


def decode_all(profiles: Sequence[Profile], messages: Sequence[RawMessage]) -> list[UsageEvent]:
    """Every event the messages decode to (raises on the first DecodeError)."""
    found = ProfileSet(profiles)
    return [event for message in messages for event in found.decode(message)]


def by_key(events: Sequence[UsageEvent]) -> dict[tuple[str, str], UsageEvent]:
    """Events indexed by (device_id, meter)."""
    return {(e.device_id, e.meter): e for e in events}
