"""Billing records: one per account, period and product; open -> closed -> billed; billed is final.

The truth of a key (what the sessions say now) is reconciled against the stored
records: an open or closed record is amended; a billed record is never edited,
the difference becomes (or amends) an adjustment record in the account's
current open period. Invariant: billed + adjustments == truth after every run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from usagehub.core.aggregation import Partial, merge_all
from usagehub.core.events import Aggregation
from usagehub.core.periods import Period, ensure_aware
from usagehub.core.sessions import Session
from usagehub.errors import DomainError

TruthKey = tuple[str, Period, str]  # (account, period, product)


class RecordStatus(StrEnum):
    """Lifecycle of a record; it only moves forward."""

    OPEN = "open"
    CLOSED = "closed"
    BILLED = "billed"


class RecordKind(StrEnum):
    """A regular record of its own period, or an adjustment of a billed one."""

    REGULAR = "regular"
    ADJUSTMENT = "adjustment"


@dataclass(frozen=True, slots=True, kw_only=True)
class BillingRecord:
    """Quantity of one product for one account and period; ``version`` grows with each amendment."""

    record_id: str
    account_id: str
    period: Period
    product: str
    quantity: Decimal
    unit: str
    status: RecordStatus = RecordStatus.OPEN
    kind: RecordKind = RecordKind.REGULAR
    adjusts: str | None = None     # record_id of the billed record an adjustment corrects
    version: int = 1

    @property
    def key(self) -> TruthKey:
        """The (account, period, product) this record bills."""
        return (self.account_id, self.period, self.product)


def regular_id(account_id: str, period: Period, product: str) -> str:
    """The stable id of the regular record of a key."""
    return f"{account_id}/{period.label}/{product}"


def adjustment_id(billed: BillingRecord, period: Period) -> str:
    """The stable id of the adjustment, in ``period``, of a billed record."""
    return f"{billed.record_id}/adj/{period.label}"


def truth_from_sessions(sessions: Iterable[Session]) -> dict[TruthKey, Decimal]:
    """Each (account, period, product)'s value: the merge of its sessions' partials."""
    partials: defaultdict[TruthKey, list[Partial]] = defaultdict(list)
    for session in sessions:
        for product, partial in session.partials.items():
            partials[(session.account_id, session.period, product)].append(partial)
    truth: dict[TruthKey, Decimal] = {}
    for key, items in partials.items():
        value = merge_all(items, items[0].aggregation).result()
        if value is not None:
            truth[key] = value
    return truth


PeriodPartials = dict[str, Partial]  # product -> what a period keeps of its sessions' partials


def kept_partial(p: Partial) -> Partial:
    """What a period keeps of a partial: count, total and seconds, and only the fields its aggregation reads.

    Count, total and seconds can be taken back exactly when a session is rewritten; a minimum, maximum, last
    value or label set can not always (``fold_partials``), so a period keeps them only where they are billed.
    """
    agg = p.aggregation
    return Partial(aggregation=agg, count=p.count, total=p.total, seconds=p.seconds,
                   minimum=p.minimum if agg is Aggregation.MIN else None,
                   maximum=p.maximum if agg is Aggregation.MAX else None,
                   last=p.last if agg is Aggregation.LAST else None,
                   last_key=p.last_key if agg is Aggregation.LAST else None,
                   labels=p.labels if agg is Aggregation.UNIQUE_COUNT else frozenset())


def period_partials(sessions: Iterable[Session]) -> dict[tuple[str, Period], PeriodPartials]:
    """Each (account, period)'s kept partials: the merge of its sessions' partials per product."""
    out: dict[tuple[str, Period], PeriodPartials] = {}
    for session in sessions:
        kept = out.setdefault((session.account_id, session.period), {})
        for product, partial in session.partials.items():
            part = kept_partial(partial)
            kept[product] = kept[product].merge(part) if product in kept else part
    return out


def fold_partials(kept: Mapping[str, Partial], removed: Iterable[Mapping[str, Partial]],
                  added: Iterable[Mapping[str, Partial]]) -> PeriodPartials | None:
    """A period's kept partials with sessions ``removed`` (all among those kept) and ``added``, exactly.

    None where that cannot be known without the period's other sessions: the removed sessions held the
    period's minimum, maximum, last value or a label and the added ones do not reach it (re-read them).
    """
    gone, new = _merged(removed), _merged(added)
    out = dict(kept)
    for product in gone.keys() | new.keys():
        base = kept.get(product)
        r, a = gone.get(product), new.get(product)
        if r is None:
            assert a is not None
            out[product] = a if base is None else base.merge(a)
            continue
        if base is None or base.aggregation is not r.aggregation:
            return None  # the removed sessions were not kept: not this period's state
        folded = _take_back(base, r, a)
        if folded is None:
            return None
        out[product] = folded
    return out


def _merged(sessions: Iterable[Mapping[str, Partial]]) -> PeriodPartials:
    out: PeriodPartials = {}
    for partials in sessions:
        for product, partial in partials.items():
            part = kept_partial(partial)
            out[product] = out[product].merge(part) if product in out else part
    return out


def _take_back(kept: Partial, removed: Partial, added: Partial | None) -> Partial | None:
    """``kept`` without ``removed`` and with ``added``; None where the extreme it bills is no longer known."""
    agg = kept.aggregation
    a = added or Partial(aggregation=agg)
    if a.aggregation is not agg:
        return None
    minimum = maximum = last = None
    last_key: tuple[datetime, str, Decimal] | None = None
    labels: frozenset[str] = frozenset()
    if agg is Aggregation.MIN:
        held = removed.minimum is not None and (kept.minimum is None or removed.minimum <= kept.minimum)
        if held and (a.minimum is None or removed.minimum is None or a.minimum > removed.minimum):
            return None
        minimum = a.minimum if held else _least(kept.minimum, a.minimum)
    elif agg is Aggregation.MAX:
        held = removed.maximum is not None and (kept.maximum is None or removed.maximum >= kept.maximum)
        if held and (a.maximum is None or removed.maximum is None or a.maximum < removed.maximum):
            return None
        maximum = a.maximum if held else _most(kept.maximum, a.maximum)
    elif agg is Aggregation.LAST:
        if removed.last_key is not None and (kept.last_key is None or removed.last_key >= kept.last_key):
            if a.last_key is None or a.last_key < removed.last_key:
                return None
            last, last_key = a.last, a.last_key
        else:
            last, last_key = kept.last, kept.last_key
            if a.last_key is not None and (last_key is None or a.last_key > last_key):
                last, last_key = a.last, a.last_key
    elif agg is Aggregation.UNIQUE_COUNT:
        if not removed.labels <= a.labels:
            return None
        labels = kept.labels | a.labels
    return Partial(aggregation=agg, count=kept.count - removed.count + a.count,
                   total=kept.total - removed.total + a.total, seconds=kept.seconds - removed.seconds + a.seconds,
                   minimum=minimum, maximum=maximum, last=last, last_key=last_key, labels=labels)


def _least(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    return b if a is None else a if b is None else min(a, b)


def _most(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    return b if a is None else a if b is None else max(a, b)


def truth_from_kept(kept: Mapping[tuple[str, Period], Mapping[str, Partial]]) -> dict[TruthKey, Decimal]:
    """Each (account, period, product)'s value from the periods' kept partials (as ``truth_from_sessions``)."""
    truth: dict[TruthKey, Decimal] = {}
    for (account, period), partials in kept.items():
        for product, partial in partials.items():
            value = partial.result()
            if value is not None:
                truth[(account, period, product)] = value
    return truth


def sessions_behind(record: BillingRecord, sessions: Iterable[Session]) -> list[Session]:
    """The sessions whose usage a regular record bills."""
    return [s for s in sessions if (s.account_id, s.period, record.product) == record.key
            and record.product in s.partials]


def amend_record(record: BillingRecord, quantity: Decimal) -> BillingRecord:
    """A new version of an open or closed record with ``quantity``; a billed record is refused."""
    if record.status is RecordStatus.BILLED:
        raise DomainError("RECORD_BILLED", f"billing record {record.record_id} is billed and final")
    return replace(record, quantity=quantity, version=record.version + 1)


def reconcile(truth: Mapping[TruthKey, Decimal], records: Sequence[BillingRecord], *,
              units: Mapping[str, str], open_period_of: Callable[[str], Period],
              scope: Collection[tuple[str, Period]] | None = None) -> list[BillingRecord]:
    """The records to write (new, or amended with a higher version) so that records match ``truth``.

    ``records`` are the stored records of the accounts concerned (regular and
    adjustments); a key missing from ``truth`` is worth 0, so pass ``scope``
    (the ``(account, period)`` pairs whose truth was computed in full) unless
    ``truth`` covers every record given. ``open_period_of`` gives an
    account's current open period, where adjustments go.
    """
    if scope is not None:
        pairs = set(scope)
        truth = {k: v for k, v in truth.items() if (k[0], k[1]) in pairs}
        records = [r for r in records if r.kind is RecordKind.ADJUSTMENT or (r.account_id, r.period) in pairs]
    regular = {r.key: r for r in records if r.kind is RecordKind.REGULAR}
    adjustments: defaultdict[str, list[BillingRecord]] = defaultdict(list)
    for r in records:
        if r.kind is RecordKind.ADJUSTMENT and r.adjusts is not None:
            adjustments[r.adjusts].append(r)
    out: list[BillingRecord] = []
    for key in sorted(set(truth) | set(regular)):
        target = truth.get(key, Decimal(0))
        record = regular.get(key)
        if record is None:
            if target != 0:
                account, period, product = key
                out.append(BillingRecord(record_id=regular_id(account, period, product), account_id=account,
                                         period=period, product=product, quantity=target,
                                         unit=units.get(product, "")))
        elif record.status is not RecordStatus.BILLED:
            if record.quantity != target:
                out.append(amend_record(record, target))
        else:
            change = _adjust(record, adjustments[record.record_id], target, open_period_of)
            if change is not None:
                out.append(change)
    return out


def _adjust(billed: BillingRecord, adjustments: Sequence[BillingRecord], target: Decimal,
            open_period_of: Callable[[str], Period]) -> BillingRecord | None:
    """Amend the pending adjustment of a billed record, or create one, so the total is ``target``."""
    diff = target - billed.quantity - sum((a.quantity for a in adjustments), Decimal(0))
    if diff == 0:
        return None
    pending = sorted((a for a in adjustments if a.status is not RecordStatus.BILLED), key=lambda a: a.period)
    if pending:
        return amend_record(pending[0], pending[0].quantity + diff)
    period = open_period_of(billed.account_id)
    if period.start < billed.period.end:
        raise DomainError("ADJUSTMENT_PERIOD", f"adjustment of {billed.record_id} must go to a later period")
    return BillingRecord(record_id=adjustment_id(billed, period), account_id=billed.account_id,
                         period=period, product=billed.product, quantity=diff, unit=billed.unit,
                         kind=RecordKind.ADJUSTMENT, adjusts=billed.record_id)


def close_records(records: Iterable[BillingRecord], as_of: datetime) -> list[BillingRecord]:
    """Open records whose period has ended by ``as_of``, now closed."""
    as_of = ensure_aware(as_of)
    return [replace(r, status=RecordStatus.CLOSED, version=r.version + 1)
            for r in records if r.status is RecordStatus.OPEN and r.period.end <= as_of]


def bill(records: Iterable[BillingRecord]) -> list[BillingRecord]:
    """A billing run: closed records become billed (and final)."""
    return [replace(r, status=RecordStatus.BILLED, version=r.version + 1)
            for r in records if r.status is RecordStatus.CLOSED]


def billed_total(records: Iterable[BillingRecord]) -> dict[TruthKey, Decimal]:
    """What the records say per key: regular quantity plus the adjustments of it."""
    by_id = {r.record_id: r for r in records}
    totals: defaultdict[TruthKey, Decimal] = defaultdict(Decimal)
    for r in by_id.values():
        target = by_id[r.adjusts] if r.adjusts is not None else r
        totals[target.key] += r.quantity
    return dict(totals)
