"""The ingest processes' counters and batch figures, added to the hub's own: one /metrics covers every process.

A child takes what its relayed counters gained since its last report, and each committed batch's commit
seconds and size, and sends them with the tokens of the batches that committed (``ingest_frames.encode_report``:
``{"counters": [[name, labels, amount]...], "batches": [[seconds, messages]...]}``); the hub adds the amounts
to the same counters in its registry and observes the batches in its histograms (prometheus_client cannot add
one histogram's buckets to another's, so the observations themselves travel).
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import Counter

from usagehub import metrics
from usagehub.runtime.ingest_frames import FrameError

# Each relayed counter with the label names it was declared with (prometheus_client has no public accessor).
RELAYED: dict[Counter, tuple[str, ...]] = {
    metrics.EVENTS_ACCEPTED: (), metrics.EVENTS_DUPLICATE: (), metrics.QUARANTINED: metrics.QUARANTINED_LABELS,
    metrics.BATCH_RETRIES: (), metrics.EVENT_INSERT_FALLBACKS: (), metrics.LOCK_TIMEOUTS: metrics.LOCK_TIMEOUT_LABELS,
    metrics.PARTITIONS_CREATED: ()}
_BY_NAME = {f"{next(iter(c.describe())).name}_total": c for c in RELAYED}  # the sample name of each counter
_MAX_DELTA = 1e12  # more than any process counts between two reports
Delta = tuple[str, dict[str, str], float]  # sample name, labels, what it gained


class CounterDeltas:
    """What the relayed counters of this process gained since the last ``take`` (in a child)."""

    def __init__(self) -> None:
        self._sent: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def take(self) -> list[Delta]:
        out: list[Delta] = []
        for counter in RELAYED:
            for family in counter.collect():
                for sample in family.samples:
                    if sample.name not in _BY_NAME:
                        continue  # the _created samples
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    gained = sample.value - self._sent.get(key, 0.0)
                    if gained > 0:
                        out.append((sample.name, dict(sample.labels), gained))
                        self._sent[key] = sample.value
        return out


Batch = tuple[float, int]  # commit seconds, messages


def parse_report(doc: Any) -> tuple[list[Delta], list[Batch]]:
    """A report's counters and batches, checked (FrameError otherwise)."""
    if not isinstance(doc, dict) or not set(doc) <= {"counters", "batches"}:
        raise FrameError("a report's figures are not {counters, batches}")
    return _parse_deltas(doc.get("counters", [])), _parse_batches(doc.get("batches", []))


def _parse_batches(doc: Any) -> list[Batch]:
    if not isinstance(doc, list):
        raise FrameError("batches are not a list")
    out: list[Batch] = []
    for item in doc:
        if not (isinstance(item, list) and len(item) == 2 and _number(item[0], 0, 86_400)
                and isinstance(item[1], int) and not isinstance(item[1], bool) and 0 < item[1] <= 10_000_000):
            raise FrameError("a batch is not [seconds, messages] in range")
        out.append((float(item[0]), item[1]))
    return out


def _number(value: Any, low: float, high: float) -> bool:
    return (not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
            and low <= value <= high)


def _parse_deltas(doc: Any) -> list[Delta]:
    """A child's deltas, checked (FrameError otherwise): known counters, their own labels, sane amounts."""
    if not isinstance(doc, list):
        raise FrameError("counters are not a list")
    out: list[Delta] = []
    for item in doc:
        if not (isinstance(item, list) and len(item) == 3):
            raise FrameError("a counter is not [name, labels, amount]")
        name, labels, amount = item
        counter = _BY_NAME.get(name) if isinstance(name, str) else None
        if counter is None or not isinstance(labels, dict) or set(labels) != set(RELAYED[counter]):
            raise FrameError(f"no such counter: {str(name)[:80]}")
        if not all(isinstance(v, str) and len(v) <= 200 for v in labels.values()):
            raise FrameError("a counter label is not a short text")
        if not _number(amount, 0, _MAX_DELTA) or amount == 0:
            raise FrameError("a counter amount out of range")
        out.append((name, labels, float(amount)))
    return out


def add_report(deltas: list[Delta], batches: list[Batch]) -> None:
    """Add a child's deltas to this process's counters and observe its batches."""
    for name, labels, amount in deltas:
        counter = _BY_NAME[name]
        (counter.labels(**labels) if labels else counter).inc(amount)
    for seconds, size in batches:
        metrics.COMMIT_SECONDS.observe(seconds)
        metrics.BATCH_SIZE.observe(size)


def report_figures(deltas: CounterDeltas, batches: list[Batch]) -> dict[str, Any]:
    """What a child's next report carries beside its tokens (``batches`` is emptied)."""
    out: dict[str, Any] = {}
    if counters := deltas.take():
        out["counters"] = counters
    if batches:
        out["batches"] = batches.copy()
        batches.clear()
    return out
