"""Rating: usage items of one account and period, priced by the plan version in force, as lines.

``rate`` is pure, deterministic and invariant to the order of its input (it sorts
inside). The rules, with worked examples, are in ``docs/rating.md``:

- the period is cut at the local midnights where the product's plan version
  changes (and at any extra ``split_at`` dates, e.g. VAT rate changes); usage is
  priced by the version in force on the local date it happened;
- graduated tiers are filled by the period's cumulative quantity of the product
  across versions, in time order; volume tiers are chosen by the period total and
  each version prices its own quantity at its own band for that total;
- standing charges and minimums are pro-rated by local days per version;
- amounts keep full precision: rounding happens once, on the invoice.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from types import MappingProxyType

from usagehub.core.calendars import BillingPeriod, Segment, cut_period, require_aware, zone
from usagehub.core.money import Money, exact, minor_unit
from usagehub.core.tariffs import PlanBook, PricePlan, Tier, TimeOfUse
from usagehub.core.tiers import band_of, graduated_split, tier_label, volume_band
from usagehub.core.tou import window_of, window_rank
from usagehub.errors import DomainError

_NO_PLANS: Mapping[str, str] = MappingProxyType({})
COMPONENT_ORDER = {"flat": 0, "graduated": 0, "volume": 0, "tou": 0, "standing_charge": 1, "minimum": 2}


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    """Who is billed: market (country code), currency, local time zone, chosen plans per product."""

    account_id: str
    market: str
    currency: str
    timezone: str = "UTC"
    plan_ids: Mapping[str, str] = field(default_factory=lambda: _NO_PLANS)
    products: frozenset[str] = frozenset()   # subscribed: standing charges even without usage

    def __post_init__(self) -> None:
        minor_unit(self.currency)
        zone(self.timezone)


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageItem:
    """A quantity of a product used by an account at one instant, with where it came from."""

    account_id: str
    product: str
    ts: datetime
    quantity: Decimal
    unit: str
    record_id: str = ""
    event_ids: tuple[str, ...] = ()

    def sort_key(self) -> tuple[datetime, str, tuple[str, ...], Decimal, str]:
        """A total order on items: equal keys mean interchangeable items."""
        return (self.ts, self.record_id, self.event_ids, self.quantity, self.unit)


@dataclass(frozen=True, slots=True, kw_only=True)
class RatedLine:
    """One priced line: a product's component (a tier, a window, a standing charge) in one segment.

    ``net`` is exact (never rounded here). ``record_ids``/``event_ids`` are the
    drill-down to the usage that produced the line. An adjustment line carries the
    difference a late re-rating of an earlier, already billed period ``adjusts``.
    """

    account_id: str
    product: str
    plan_id: str
    plan_version: str             # the version's valid_from, ISO date
    component: str                # flat, graduated, volume, tou, standing_charge, minimum
    detail: str                   # tier or window label; "" for flat
    rank: int                     # order of the tier/window inside the component
    quantity: Decimal
    unit: str
    unit_price: Money
    net: Money
    vat_category: str
    supply_from: datetime
    supply_to: datetime
    record_ids: tuple[str, ...] = ()
    event_ids: tuple[str, ...] = ()
    adjusts: BillingPeriod | None = None

    def sort_key(self) -> tuple[object, ...]:
        """The canonical line order: product, time, component, band."""
        return (self.product, self.supply_from, COMPONENT_ORDER[self.component], self.rank, self.detail,
                self.adjusts.start if self.adjusts else self.supply_from)

    def key(self) -> tuple[str, str, str, str, datetime]:
        """What identifies 'the same line' between two ratings of one period."""
        return (self.product, self.plan_version, self.component, self.detail, self.supply_from)


def select_plan(book: PlanBook, account: Account, product: str) -> PricePlan:
    """The plan pricing ``product`` for ``account``: its chosen plan, else the one plan of its market."""
    chosen = account.plan_ids.get(product)
    if chosen is not None:
        plans = [p for p in book.plans if p.id == chosen]
    else:
        plans = [p for p in book.plans if p.product == product and p.market == account.market]
    if not plans:
        raise DomainError("NO_PLAN", f"no price plan for {product!r} in market {account.market!r}")
    if len(plans) > 1:
        raise DomainError("AMBIGUOUS_PLAN", f"several plans price {product!r} in {account.market!r}: "
                          "choose one in the account's plan_ids")
    plan = plans[0]
    if plan.product != product or plan.currency != account.currency:
        raise DomainError("PLAN_MISMATCH", f"plan {plan.id!r} prices {plan.product} in {plan.currency}, "
                          f"not {product} in {account.currency}")
    return plan


def _check_items(items: Iterable[UsageItem], account: Account, period: BillingPeriod) -> list[UsageItem]:
    checked = []
    for item in items:
        require_aware(item.ts, "usage time")
        if item.account_id != account.account_id:
            raise DomainError("WRONG_ACCOUNT",
                              f"usage of {item.account_id!r} in {account.account_id!r}'s rating")
        if not period.contains(item.ts):
            raise DomainError("OUT_OF_PERIOD", f"usage at {item.ts.isoformat()} is outside the period")
        if not isinstance(item.quantity, Decimal) or not item.quantity.is_finite():
            raise DomainError("NOT_DECIMAL", "usage quantities are finite Decimals")
        checked.append(item)
    return sorted(checked, key=UsageItem.sort_key)


def rate(items: Iterable[UsageItem], book: PlanBook, account: Account, period: BillingPeriod, *,
         split_at: Iterable[date] = ()) -> list[RatedLine]:
    """Price ``items`` of ``account`` in ``period``: lines in canonical order, exact amounts.

    ``split_at`` holds extra local dates to cut the period at (VAT rate changes), so
    that every line has one VAT rate.
    """
    ordered = _check_items(items, account, period)
    extra = tuple(split_at)
    by_product: dict[str, list[UsageItem]] = {}
    for item in ordered:
        by_product.setdefault(item.product, []).append(item)
    lines: list[RatedLine] = []
    with exact():
        for product in sorted(set(by_product) | account.products):
            plan = select_plan(book, account, product)
            lines.extend(_rate_product(by_product.get(product, []), plan, book, account, period, extra))
    return sorted(lines, key=RatedLine.sort_key)


def _cut_dates(plan: PricePlan, extra: Sequence[date]) -> list[date]:
    dates: list[date] = [*extra]
    for version in plan.versions:
        dates.append(version.valid_from)
        if version.valid_to is not None:
            dates.append(version.valid_to)
    return dates


def _rate_product(items: list[UsageItem], plan: PricePlan, book: PlanBook, account: Account,
                  period: BillingPeriod, extra: Sequence[date]) -> list[RatedLine]:
    tz = zone(account.timezone)
    segments = cut_period(period, tz, _cut_dates(plan, extra))
    starts = [s.start for s in segments]
    per_segment: list[list[UsageItem]] = [[] for _ in segments]
    for item in items:
        if item.unit != plan.unit:
            raise DomainError("UNIT_MISMATCH", f"{item.product} usage in {item.unit!r}; plan {plan.id!r} "
                              f"prices {plan.unit!r}")
        per_segment[bisect_right(starts, item.ts) - 1].append(item)
    period_days = sum(len(s.days) for s in segments)
    total_qty = sum((i.quantity for i in items), Decimal(0))
    ctx = _Context(plan=plan, book=book, account=account, period_days=period_days, total_qty=total_qty)
    lines: list[RatedLine] = []
    cumulative = Decimal(0)
    for segment, seg_items in zip(segments, per_segment, strict=True):
        lines.extend(ctx.usage_lines(segment, seg_items, cumulative))
        cumulative += sum((i.quantity for i in seg_items), Decimal(0))
        lines.extend(ctx.standing_lines(segment))
    lines.extend(ctx.minimum_lines(segments, lines))
    return lines


def _refs(items: Iterable[UsageItem]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The sorted billing record ids and event ids behind ``items``."""
    items = list(items)
    return (tuple(sorted({i.record_id for i in items if i.record_id})),
            tuple(sorted({e for i in items for e in i.event_ids})))


@dataclass(frozen=True, slots=True, kw_only=True)
class _Context:
    """What every line of one product and period shares."""

    plan: PricePlan
    book: PlanBook
    account: Account
    period_days: int
    total_qty: Decimal

    def line(self, segment: Segment, component: str, quantity: Decimal, unit: str, unit_price: Decimal,
             net: Decimal, *, detail: str = "", rank: int = 0, items: Iterable[UsageItem] = (),
             vat_category: str | None = None) -> RatedLine:
        """A line of this product in ``segment``."""
        version = self.plan.version_on(segment.first_day)
        currency = self.plan.currency
        record_ids, event_ids = _refs(items)
        return RatedLine(
            account_id=self.account.account_id, product=self.plan.product, plan_id=self.plan.id,
            plan_version=version.valid_from.isoformat() if version else "", component=component,
            detail=detail, rank=rank, quantity=quantity, unit=unit,
            unit_price=Money(amount=unit_price, currency=currency), net=Money(amount=net, currency=currency),
            vat_category=vat_category or self.plan.vat_category, supply_from=segment.start,
            supply_to=segment.end, record_ids=record_ids, event_ids=event_ids)

    def usage_lines(self, segment: Segment, items: list[UsageItem], before: Decimal) -> list[RatedLine]:
        """The usage price lines of ``segment``; ``before`` is the product's quantity earlier on."""
        if not items:
            return []
        version = self.plan.version_on(segment.first_day)
        price = version.usage_price if version else None
        if price is None:
            raise DomainError("NO_PLAN_IN_FORCE", f"no usage price of plan {self.plan.id!r} in force on "
                              f"{segment.first_day} for usage at {items[0].ts.isoformat()}")
        qty = sum((i.quantity for i in items), Decimal(0))
        if price.type == "flat":
            return [self.line(segment, "flat", qty, self.plan.unit, price.price, qty * price.price,
                              items=items)]
        if price.type == "volume":
            band = volume_band(price.tiers, self.total_qty)
            return [self.line(segment, "volume", qty, self.plan.unit, band.price, qty * band.price,
                              detail=band.label, rank=band.index, items=items)]
        if price.type == "graduated":
            return self._graduated(segment, items, before, price.tiers)
        return self._tou(segment, items, price)

    def _graduated(self, segment: Segment, items: list[UsageItem], before: Decimal,
                   tiers: Sequence[Tier]) -> list[RatedLine]:
        quantities: dict[int, Decimal] = {}
        reached: dict[int, list[UsageItem]] = {}
        running = before
        for item in items:   # per item, so each tier line drills down to the items that reached it
            for index, quantity in graduated_split(tiers, running, running + item.quantity):
                quantities[index] = quantities.get(index, Decimal(0)) + quantity
                reached.setdefault(index, []).append(item)
            running += item.quantity
        if not quantities:   # the segment's usage nets to zero inside one band: keep its drill-down
            quantities[band_of(tiers, before)] = Decimal(0)
            reached[band_of(tiers, before)] = items
        return [self.line(segment, "graduated", quantities[i], self.plan.unit, tiers[i].price,
                          quantities[i] * tiers[i].price, detail=tier_label(tiers, i), rank=i,
                          items=reached[i]) for i in sorted(quantities)]

    def _tou(self, segment: Segment, items: list[UsageItem], price: TimeOfUse) -> list[RatedLine]:
        tz = zone(self.account.timezone)
        holidays = self.book.holidays(price.calendar)
        groups: dict[str, tuple[Decimal, list[UsageItem]]] = {}
        for item in items:
            name, unit_price = window_of(price, item.ts, tz, holidays)
            groups.setdefault(name, (unit_price, []))[1].append(item)
        lines = []
        for name, (unit_price, its) in groups.items():
            qty = sum((i.quantity for i in its), Decimal(0))
            lines.append(self.line(segment, "tou", qty, self.plan.unit, unit_price, qty * unit_price,
                                   detail=name, rank=window_rank(price, name), items=its))
        return lines

    def standing_lines(self, segment: Segment) -> list[RatedLine]:
        """The standing charge of ``segment`` (per local day, or the period's amount pro-rated by days)."""
        version = self.plan.version_on(segment.first_day)
        charge = version.standing_charge if version else None
        if charge is None or not segment.days:
            return []
        days = Decimal(len(segment.days))
        if charge.per == "day":
            unit_price, net = charge.amount, charge.amount * days
        else:
            unit_price = charge.amount / self.period_days
            net = charge.amount * days / self.period_days   # exact when the segment is the whole period
        return [self.line(segment, "standing_charge", days, "day", unit_price, net,
                          vat_category=charge.vat_category)]

    def minimum_lines(self, segments: list[Segment], lines: list[RatedLine]) -> list[RatedLine]:
        """The top-up to the pro-rated minimum when usage charges fall short of it."""
        required, last = Decimal(0), None
        for segment in segments:
            version = self.plan.version_on(segment.first_day)
            if version is not None and version.minimum is not None:
                required += version.minimum.amount * len(segment.days) / self.period_days
                last = segment
        if last is None:
            return []
        used = sum((ln.net.amount for ln in lines if COMPONENT_ORDER[ln.component] == 0), Decimal(0))
        if used >= required:
            return []
        shortfall = required - used
        tail = Segment(start=last.start, end=segments[-1].end, days=last.days)
        return [self.line(tail, "minimum", Decimal(1), "period", shortfall, shortfall)]


def diff_lines(billed: Iterable[RatedLine], rerated: Iterable[RatedLine], period: BillingPeriod, *,
               cause: Iterable[UsageItem] = ()) -> list[RatedLine]:
    """Adjustment lines: what a re-rating of already billed ``period`` adds to (or takes from) the bill.

    Lines are matched by :meth:`RatedLine.key`; each adjustment carries the quantity
    and net differences, and drills down to the records and events the re-rating
    added plus those of the ``cause`` items of its product (the late usage: it
    also moves earlier usage between bands). Unchanged lines give nothing.
    """
    causes: dict[str, list[UsageItem]] = {}
    for item in cause:
        causes.setdefault(item.product, []).append(item)
    before = {line.key(): line for line in billed}
    after = {line.key(): line for line in rerated}
    adjustments = []
    with exact():
        for key in sorted(before.keys() | after.keys()):
            old, new = before.get(key), after.get(key)
            base = new or old
            assert base is not None
            quantity = (new.quantity if new else Decimal(0)) - (old.quantity if old else Decimal(0))
            net = (new.net.amount if new else Decimal(0)) - (old.net.amount if old else Decimal(0))
            if not quantity and not net:
                continue
            records, events = _refs(causes.get(base.product, ()))
            adjustments.append(replace(
                base, quantity=quantity, net=Money(amount=net, currency=base.net.currency), adjusts=period,
                record_ids=_added(old.record_ids if old else (), new.record_ids if new else (), records),
                event_ids=_added(old.event_ids if old else (), new.event_ids if new else (), events)))
    return sorted(adjustments, key=RatedLine.sort_key)


def _added(old: tuple[str, ...], new: tuple[str, ...], caused: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted((set(new) - set(old)) | set(caused)))


def rate_adjustment(billed: Iterable[UsageItem], late: Iterable[UsageItem], book: PlanBook, account: Account,
                    period: BillingPeriod, *, split_at: Iterable[date] = ()) -> list[RatedLine]:
    """Adjustment lines for ``late`` usage of an already billed ``period``.

    The period is re-rated with its billed and late usage together and compared with
    the rating of the billed usage alone, so tiers, volume bands and minimums come
    out exactly as if the late data had arrived in time.
    """
    billed, late, cuts = list(billed), list(late), tuple(split_at)
    before = rate(billed, book, account, period, split_at=cuts)
    after = rate([*billed, *late], book, account, period, split_at=cuts)
    return diff_lines(before, after, period, cause=late)
