"""Points a session replay reads when batches append to the end of a segment, with and without append chunks.

A session worker visits an account every few seconds and replays from the chunk holding its earliest new
point. Before append chunks that was the segment's last chunk, which grows to ``core.segments.CHUNK``
points as a 3-hour segment fills: the cost of a visit climbed through every segment (the soak's session
queue grew). With them (``rewalk(append=True)``, the default) new points get a chunk of their own and the
chunk before folds into the one before it, so a visit reads its own points and at most CHUNK // TAIL older
ones. Pure core (an in-memory store answers the walk's requests), so the figures do not depend on the load.

    .venv/bin/python bench/segment_tail.py
"""

from __future__ import annotations

import bisect
import statistics
import sys
import time
from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from usagehub.core.allocation import Point, PointKind
from usagehub.core.events import Aggregation
from usagehub.core.segments import (
    SEGMENT,
    Listed,
    Mark,
    MarkBefore,
    MarksAfter,
    Outcome,
    PointsIn,
    rewalk,
    settle_outcome,
)
from usagehub.core.sessions import SessionRules

START = datetime(2026, 11, 2, 0, tzinfo=UTC)  # a segment start
RULES = SessionRules(idle_timeout=timedelta(hours=1), zone=ZoneInfo("UTC"))


class Store:
    """One account and service: points sorted by start, marks by start."""

    def __init__(self) -> None:
        self.points: list[Point] = []
        self.starts: list[datetime] = []
        self.marks: dict[datetime, Mark] = {}

    def answer(self, req: object) -> Any:
        keys = sorted(self.marks)
        if isinstance(req, MarkBefore):
            i = bisect.bisect_right(keys, req.at)
            return self.marks[keys[i - 1]] if i else None
        if isinstance(req, MarksAfter):
            i = bisect.bisect_right(keys, req.after)
            return [self.marks[k] for k in keys[i:i + req.limit]]
        if isinstance(req, Listed):
            last = keys[-1] if keys else None
            return {r for k in keys if k not in req.skip and (k >= req.since or k == last)
                    for r in self.marks[k].created if r in req.resumes}
        assert isinstance(req, PointsIn)
        return self.points[bisect.bisect_left(self.starts, req.start):bisect.bisect_left(self.starts, req.end)]

    def visit(self, batch: list[Point], as_of: datetime, append: bool) -> Outcome:
        for p in batch:
            i = bisect.bisect_right(self.starts, p.start)
            self.points.insert(i, p)
            self.starts.insert(i, p.start)
        gen: Generator[Any, Any, Outcome] = rewalk(account_id="acc", service="power", rules=RULES, as_of=as_of,
                                                   changed=[p.start for p in batch], append=append)
        ans = None
        try:
            while True:
                ans = self.answer(gen.send(ans))
        except StopIteration as stop:
            out = settle_outcome(stop.value)
        for start in out.dropped:
            del self.marks[start]
        self.marks.update({m.start: m for m in out.marks})
        return out


def run(name: str, every: timedelta, per_visit: int, meters: int, append: bool) -> str:
    """A 3-hour segment of ``meters`` meters reading every ``every``, replayed every ``per_visit`` points."""
    store = Store()
    n = int(SEGMENT / every) * meters
    points = [Point(account_id="acc", service="power", device_id=f"m{i % meters}", product="energy",
                    kind=PointKind.USAGE, aggregation=Aggregation.SUM, start=START + every * (i // meters),
                    end=START + every * (i // meters + 1), value=Decimal(i % 50)) for i in range(n)]
    reads: list[int] = []
    t0 = time.perf_counter()
    for i in range(0, n, per_visit):
        batch = points[i:i + per_visit]
        reads.append(store.visit(batch, batch[-1].end, append).points_read)
    took = time.perf_counter() - t0
    tenth = max(1, len(reads) // 10)
    first, last = statistics.median(reads[:tenth]), statistics.median(reads[-tenth:])
    return (f"{name:<34} {'append chunks' if append else 'before':<13} visits {len(reads):5d}  points read per visit: "
            f"first tenth {first:6.0f}, last tenth {last:6.0f}, max {max(reads):5d}; marks {len(store.marks):3d}; "
            f"{took:5.1f} s")


def main() -> None:
    cases = [("household: 1 reading / 6 s, visit / 2", timedelta(seconds=6), 2, 1),
             ("building: 50 meters / 5 s, visit / 100", timedelta(seconds=5), 100, 50)]
    for name, every, per_visit, meters in cases:
        for append in (False, True):  # the baseline first, in the same run
            print(run(name, every, per_visit, meters, append), flush=True)


if __name__ == "__main__":
    main()
