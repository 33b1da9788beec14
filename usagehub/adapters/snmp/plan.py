"""What to poll for a profile: scalar OIDs for one GET, table columns to walk, counters to mark."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from usagehub.core.codecs.snmp import SnmpOptions
from usagehub.core.events import MeterKind
from usagehub.core.profiles import Profile

SYS_UPTIME = "1.3.6.1.2.1.1.3.0"


@dataclass(frozen=True, slots=True, kw_only=True)
class Counter:
    """A cumulative OID whose drops are checked against its wrap width."""

    wrap_bits: int | None
    missing: frozenset[Decimal]


@dataclass(frozen=True, slots=True, kw_only=True)
class PollPlan:
    """The requests of one poll of one device, derived once per profile."""

    profile_id: str
    version: str
    interval_s: float
    timeout_s: float
    retries: int
    scalars: tuple[str, ...]          # always starts with sysUpTime.0
    columns: tuple[str, ...]          # walked table columns
    counters: dict[str, Counter]      # scalar OID or column OID -> counter rules
    discontinuity_oid: str | None
    discontinuity_is_column: bool
    has_scalar_meters: bool

    @property
    def topic(self) -> str:
        """The RawMessage topic of walk rows: the longest common OID prefix of the columns."""
        parts = [c.split(".") for c in self.columns]
        common: list[str] = []
        for items in zip(*parts, strict=False):
            if len(set(items)) != 1:
                break
            common.append(items[0])
        return ".".join(common) or "walk"


def plan_for(profile: Profile) -> PollPlan | None:
    """The poll plan of ``profile``, or None when it is not a polled SNMP profile."""
    if profile.poll is None or profile.decode_type != "snmp":
        return None
    options = SnmpOptions.model_validate(profile.decode)
    scalars: list[str] = [SYS_UPTIME]
    columns: list[str] = []
    counters: dict[str, Counter] = {}
    for spec in profile.meters.values():
        if spec.oid is None:
            continue
        target = columns if spec.walk else scalars
        if spec.oid not in target:
            target.append(spec.oid)
        if spec.kind is MeterKind.CUMULATIVE:
            counters[spec.oid] = Counter(wrap_bits=spec.wrap_bits, missing=frozenset(spec.missing_values))
    disc = options.discontinuity_oid
    disc_is_column = bool(disc and columns)
    if disc and disc not in (columns if disc_is_column else scalars):
        (columns if disc_is_column else scalars).append(disc)
    return PollPlan(profile_id=profile.id, version=profile.poll.version, interval_s=profile.poll.interval_s,
                    timeout_s=profile.poll.timeout_s, retries=profile.poll.retries, scalars=tuple(scalars),
                    columns=tuple(columns), counters=counters, discontinuity_oid=disc,
                    discontinuity_is_column=disc_is_column,
                    has_scalar_meters=any(s.oid and not s.walk for s in profile.meters.values()))
