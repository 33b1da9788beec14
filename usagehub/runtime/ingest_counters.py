"""The ingest processes' counters, added to the hub's own: one /metrics counts every process's events.

A child takes what its relayed counters gained since its last report and sends it with the tokens of the
batches that committed (``ingest_frames.encode_report``); the hub adds it to the same counters in its
registry. Counters only: a histogram's buckets cannot be added to through prometheus_client, so commit
times and batch sizes stay per process (``worker_metrics_port``).
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import Counter

from usagehub import metrics
from usagehub.runtime.ingest_frames import FrameError

RELAYED: tuple[Counter, ...] = (metrics.EVENTS_ACCEPTED, metrics.EVENTS_DUPLICATE, metrics.QUARANTINED,
                                metrics.BATCH_RETRIES, metrics.EVENT_INSERT_FALLBACKS, metrics.LOCK_TIMEOUTS,
                                metrics.PARTITIONS_CREATED)
_BY_NAME = {f"{c._name}_total": c for c in RELAYED}  # the sample name of each counter
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


def parse_deltas(doc: Any) -> list[Delta]:
    """A child's deltas, checked (FrameError otherwise): known counters, their own labels, sane amounts."""
    if not isinstance(doc, list):
        raise FrameError("counters are not a list")
    out: list[Delta] = []
    for item in doc:
        if not (isinstance(item, list) and len(item) == 3):
            raise FrameError("a counter is not [name, labels, amount]")
        name, labels, amount = item
        counter = _BY_NAME.get(name) if isinstance(name, str) else None
        if counter is None or not isinstance(labels, dict) or set(labels) != set(counter._labelnames):
            raise FrameError(f"no such counter: {str(name)[:80]}")
        if not all(isinstance(v, str) and len(v) <= 200 for v in labels.values()):
            raise FrameError("a counter label is not a short text")
        if isinstance(amount, bool) or not isinstance(amount, int | float) or not math.isfinite(amount) \
                or not 0 < amount <= _MAX_DELTA:
            raise FrameError("a counter amount out of range")
        out.append((name, labels, float(amount)))
    return out


def add_deltas(deltas: list[Delta]) -> None:
    """Add a child's deltas to this process's counters."""
    for name, labels, amount in deltas:
        counter = _BY_NAME[name]
        (counter.labels(**labels) if labels else counter).inc(amount)
