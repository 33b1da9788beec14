"""What an ingest batch spends per stored point to know which session segments to queue.

``pipeline.sessions._earliest_per_segment`` runs over every bound point of a batch (deferred sessions,
``serve``'s default): the earliest instant of each (account, service, segment). Same points, same process:
  segment_start  grouping by ``core.segments.segment_start`` (timedelta division and product per point)
  segment_index  grouping by ``core.segments.segment_index`` (what the batch does)
on a batch of fleet-like points (40 accounts, five weeks, 15-minute instants). Medians of 7, µs per point.

Run: .venv/bin/python bench/queue_keys.py [POINTS]
"""

from __future__ import annotations

import random
import statistics
import sys
import timeit
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from usagehub.core.segments import segment_start  # noqa: E402
from usagehub.pipeline.sessions import _earliest_per_segment  # noqa: E402

Instants = list[tuple[str, str, datetime]]


def by_start(instants: Iterable[tuple[str, str, datetime]]) -> set[tuple[str, str, datetime]]:
    """The grouping keyed by segment start, as before ``segment_index``."""
    first: dict[tuple[str, str, datetime], datetime] = {}
    for account, service, t in instants:
        key = (account, service, segment_start(t))
        first[key] = min(first.get(key, t), t)
    return {(a, s, t) for (a, s, _), t in first.items()}


def points(n: int) -> Instants:
    rng = random.Random(14)
    start = datetime(2026, 10, 1, tzinfo=UTC)
    return [(f"acct-{rng.randrange(40):03d}", rng.choice(("energy", "security")),
             start + timedelta(minutes=15 * rng.randrange(4 * 24 * 35))) for _ in range(n)]


def per_point(fn: Callable[[Instants], object], batch: Instants) -> float:
    runs = timeit.repeat(lambda: fn(batch), number=20, repeat=7)
    return statistics.median(runs) / 20 / len(batch) * 1e6


def main() -> None:
    batch = points(int(sys.argv[1]) if len(sys.argv) > 1 else 1500)
    assert by_start(batch) == _earliest_per_segment(batch)  # the same rows queued
    print(f"{len(batch)} points, µs per point (median of 7)")
    for name, fn in (("segment_start", by_start), ("segment_index", _earliest_per_segment)):
        print(f"  {name:<14} {per_point(fn, batch):6.2f}")


if __name__ == "__main__":
    main()
