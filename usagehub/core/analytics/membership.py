"""Who entered and who left a segment between two evaluations."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class MembershipDiff:
    """Members now, and the accounts that entered and left since the previous evaluation (sorted)."""

    members: tuple[str, ...]
    entered: tuple[str, ...]
    left: tuple[str, ...]


def diff_members(previous: Iterable[str], current: Iterable[str]) -> MembershipDiff:
    """The change from ``previous`` to ``current`` members."""
    before, now = set(previous), set(current)
    return MembershipDiff(members=tuple(sorted(now)), entered=tuple(sorted(now - before)),
                          left=tuple(sorted(before - now)))
