"""The eight aggregations, as mergeable partial states (a session's partial merges into a period's).

A :class:`Partial` summarises samples of one meter; partials of disjoint sample
sets merge associatively and commutatively, so a billing period's value is the
merge of its sessions' partials, whatever their order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal

import msgspec

from usagehub.core.events import Aggregation
from usagehub.core.records import Record

_ZERO = Decimal(0)
_NO_LABELS: frozenset[str] = frozenset()


class Sample(Record, frozen=True, kw_only=True):
    """One value of a meter at an instant; ``label`` is what a unique count counts."""

    at: datetime
    value: Decimal
    label: str | None = None
    tie: str = ""     # orders samples that share an instant (for ``last``)


class Partial(Record, frozen=True, kw_only=True):
    """Mergeable state of one aggregation over a set of samples (and state durations)."""

    aggregation: Aggregation
    count: int = 0
    total: Decimal = _ZERO
    minimum: Decimal | None = None
    maximum: Decimal | None = None
    last: Decimal | None = None
    last_key: tuple[datetime, str, Decimal] | None = None  # value last: ties stay total
    labels: frozenset[str] = msgspec.field(default_factory=frozenset)
    seconds: Decimal = _ZERO

    @classmethod
    def of(cls, aggregation: Aggregation, samples: Iterable[Sample], seconds: Decimal = _ZERO) -> Partial:
        """Summarise ``samples`` (plus ``seconds`` spent in the active state)."""
        items: Sequence[Sample] = list(samples)
        if not items:
            return cls(aggregation=aggregation, seconds=seconds)
        values = [s.value for s in items]
        final = max(items, key=lambda s: (s.at, s.tie, s.value))
        labels = kept_labels(aggregation, (_label(s) for s in items))
        return cls(aggregation=aggregation, count=len(items), total=sum(values, _ZERO),
                   minimum=min(values), maximum=max(values), last=final.value,
                   last_key=(final.at, final.tie, final.value), labels=labels, seconds=seconds)

    def merge(self, other: Partial) -> Partial:
        """The partial of the union of both sample sets."""
        if other.aggregation is not self.aggregation:
            raise ValueError(f"cannot merge {self.aggregation} with {other.aggregation}")
        last, last_key = self.last, self.last_key
        if other.last_key is not None and (last_key is None or other.last_key > last_key):
            last, last_key = other.last, other.last_key
        return Partial(aggregation=self.aggregation, count=self.count + other.count,
                       total=self.total + other.total, minimum=_pick(True, self.minimum, other.minimum),
                       maximum=_pick(False, self.maximum, other.maximum), last=last, last_key=last_key,
                       labels=self.labels | other.labels if other.labels else self.labels,
                       seconds=self.seconds + other.seconds)

    def result(self) -> Decimal | None:
        """The aggregated value; None where it is undefined (min of nothing, avg of nothing)."""
        match self.aggregation:
            case Aggregation.SUM:
                return self.total
            case Aggregation.COUNT:
                return Decimal(self.count)
            case Aggregation.MIN:
                return self.minimum
            case Aggregation.MAX:
                return self.maximum
            case Aggregation.AVG:
                return self.total / self.count if self.count else None
            case Aggregation.LAST:
                return self.last
            case Aggregation.UNIQUE_COUNT:
                return Decimal(len(self.labels))
            case Aggregation.DURATION:
                return self.seconds
        raise AssertionError(self.aggregation)  # pragma: no cover - the match is exhaustive


def kept_labels(aggregation: Aggregation, labels: Iterable[str]) -> frozenset[str]:
    """The distinct labels a partial of ``aggregation`` keeps: a unique count's only.

    Kept for every aggregation, they grew with the session (a month of a meter's distinct values in
    each partial, walk mark and stored session); states stored that way are read back through here.
    """
    return frozenset(labels) if aggregation is Aggregation.UNIQUE_COUNT else _NO_LABELS


def _label(sample: Sample) -> str:
    # A unique count counts labels (user ids, card numbers) or else distinct values.
    return sample.label if sample.label is not None else str(sample.value.normalize())


def _pick(smallest: bool, a: Decimal | None, b: Decimal | None) -> Decimal | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b) if smallest else max(a, b)


def aggregate(aggregation: Aggregation, samples: Iterable[Sample],
              seconds: Decimal = _ZERO) -> Decimal | None:
    """One aggregation over a list of samples (duration: the ``seconds`` given)."""
    return Partial.of(aggregation, samples, seconds).result()


def merge_all(partials: Iterable[Partial], aggregation: Aggregation) -> Partial:
    """Merge any number of partials of one aggregation."""
    out = Partial(aggregation=aggregation)
    for partial in partials:
        out = out.merge(partial)
    return out


def active_seconds(transitions: Iterable[tuple[datetime, bool]], start: datetime, end: datetime,
                   *, initially_active: bool = False) -> Decimal:
    """Seconds in the active state within ``[start, end)``, from ``(at, active)`` transitions."""
    total = _ZERO
    since: datetime | None = start if initially_active else None
    for at, active in sorted(transitions, key=lambda t: t[0]):
        at = min(max(at, start), end)
        if active and since is None:
            since = at
        elif not active and since is not None:
            total += seconds_between(since, at)
            since = None
    if since is not None:
        total += seconds_between(since, end)
    return total


def seconds_between(a: datetime, b: datetime) -> Decimal:
    """Exact seconds from ``a`` to ``b`` as a Decimal (microsecond precision)."""
    delta = b - a
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return Decimal(micros).scaleb(-6)


def results(partials: Mapping[str, Partial]) -> dict[str, Decimal | None]:
    """The result of each meter's partial."""
    return {meter: p.result() for meter, p in partials.items()}
